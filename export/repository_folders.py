"""The folders of a model repository: writing a model's folder, copying ONNX graphs with their external data,
staging a new export beside (or inside) the repository and moving it in, and telling which target the models
already there were written for.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from .gpu_target import ExportOptionsError
from .model_configs import Target, config_text, parse_config
from .onnx_export import external_data_file, external_data_locations

STAGING_PREFIX = ".bge-triton-staging-"


def write_model(
    root: Path, config: mc.ModelConfig, files: dict[str, Path], extra: dict[str, str] | None = None
) -> None:
    folder = root / config.name
    version = folder / "1"
    version.mkdir(parents=True)
    (folder / "config.pbtxt").write_text(config_text(config), encoding="utf-8")
    for dest, src in files.items():
        (version / dest).parent.mkdir(parents=True, exist_ok=True)  # e.g. the torch engine's checkpoint/
        if dest.endswith(".onnx"):
            copy_onnx(Path(src), version / dest)
        else:
            shutil.copyfile(src, version / dest)
    for dest, text in (extra or {}).items():
        (folder / dest).write_text(text, encoding="utf-8")


def copy_onnx(source: Path, dest: Path) -> None:
    """Copy a graph; one with external data gets it as `<dest>.data` (`model.onnx.data`) beside it."""
    locations = external_data_locations(source)
    if not locations:
        shutil.copyfile(source, dest)
        return
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.load(str(source), load_external_data=False)
    renamed = {locations[0]: external_data_file(dest).name} if len(locations) == 1 else {}
    for tensor in _get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value in renamed:
                entry.value = renamed[entry.value]
    onnx.save_model(model, str(dest))  # the graph alone: its tensors stay in the data file
    for location in locations:
        shutil.copyfile(source.parent / location, dest.parent / renamed.get(location, location))


def staging_parent(repository: Path) -> Path:
    """Where the new model folders are built before they are renamed into `repository`: beside it when that is
    one filesystem, else inside it. A rename cannot cross filesystems (EXDEV), and a repository that is a
    mount point (compose's bind mount `/models`, a Kubernetes PVC, a tmpfs) never shares its parent's mount.
    Triton takes every folder of a repository for a model, dot-folders too ("Poll failed for model directory
    '.bge-triton-…'"), so staging inside is the second choice: it exists only while export runs."""
    parent = repository.resolve().parent
    if os.path.ismount(repository) or os.stat(repository).st_dev != os.stat(parent).st_dev:
        return repository
    return parent


def move_folder(source: Path, dest: Path) -> None:
    """Rename `source` to `dest`; a copy where the kernel refuses the rename across mounts (EXDEV: two bind
    mounts of one filesystem share st_dev but not a mount)."""
    try:
        source.rename(dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        partial = dest.with_name(f"{STAGING_PREFIX}{dest.name}")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial)
        partial.rename(dest)  # same folder: atomic
        shutil.rmtree(source, ignore_errors=True)


def repository_targets(repository: Path, skip: frozenset[str] | set[str] = frozenset()) -> dict[str, str]:
    """The target each ONNX model already in `repository` was written for (folder -> local | container-gpu)."""
    found: dict[str, str] = {}
    for path in sorted(Path(repository).glob("*/config.pbtxt")):
        if path.parent.name in skip:
            continue
        try:
            config = parse_config(path.read_text(encoding="utf-8"))
        except (OSError, text_format.ParseError):
            continue
        if config.platform == "onnxruntime_onnx":
            found[path.parent.name] = "container-gpu"
        elif config.backend == "python" and "onnx_file" in config.parameters:
            found[path.parent.name] = "local"
    return found


def refuse_mixed_targets(repository: Path, target: Target, own: set[str]) -> None:
    """One repository, one target: the NGC image's Python backend has no onnxruntime (a local-target model makes
    tritonserver exit there), and the pytriton tritonserver has no onnxruntime backend."""
    other = {folder: found for folder, found in repository_targets(repository, own).items() if found != target}
    if other:
        folder, found = next(iter(sorted(other.items())))
        raise ExportOptionsError(
            f"{repository} already holds {folder} for --target {found}; a repository serves one target (the NGC "
            f"image cannot load local-target models, the local tritonserver cannot load container-gpu ones): "
            f"export --target {target} into another --repository"
        )


def remove_stale_staging(repository: Path) -> None:
    """Staging folders an interrupted export (SIGKILL) left inside the repository: Triton would refuse them."""
    for stale in repository.glob(f"{STAGING_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
