"""The embedded default: all-MiniLM-L6-v2 exported once into the user's data directory."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from . import __version__, triton_models
from .paths import default_repository

log = logging.getLogger("bge_triton.serve")
STAMP_FILE = ".bge-triton-stamp"


def _stamp() -> str:
    """Changes whenever the package version, the Triton model sources or the export code change."""
    from bge_triton import export

    digest = hashlib.sha256(__version__.encode())
    for package in (triton_models, export):
        for source in sorted(Path(package.__file__).parent.glob("*.py")):
            digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def ensure_default_repository(repository: Path | None = None) -> Path:
    """Export the embedded default model unless an up-to-date export is already there."""
    from bge_triton.export.checkpoint import EMBEDDED_DEFAULT_ID, EMBEDDED_DEFAULT_NAME

    repository = repository or default_repository()
    stamp_path = repository / STAMP_FILE
    if stamp_path.is_file() and stamp_path.read_text().strip() == _stamp():
        return repository
    log.info(
        "first run: exporting the embedded default model %s to %s (once)",
        EMBEDDED_DEFAULT_NAME, repository,
    )  # fmt: skip
    from bge_triton.export.exporter import export_model

    export_model(EMBEDDED_DEFAULT_ID, repository, name=EMBEDDED_DEFAULT_NAME)
    stamp_path.write_text(_stamp() + "\n")
    return repository
