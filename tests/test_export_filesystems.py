"""Export into a repository that is its own filesystem (compose's bind mount /models, a Kubernetes PVC, a tmpfs).

The model folders used to be staged beside the repository and renamed into it: across a mount point that is
`OSError: [Errno 18] Invalid cross-device link`, export exited 1 and compose waited forever on it.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bge_triton.export.onnx_export import export_pooling
from bge_triton.export.repository import write_repository
from bge_triton.export.repository_folders import STAGING_PREFIX, move_folder, staging_parent
from bge_triton.model_facts import ModelFacts
from bge_triton.package_data import model_config_dir

FOLDERS = ["xdev", "xdev-encoder", "xdev-ids", "xdev-pooling", "xdev-tokenize", "xdev-tokenizer"]

# Run inside a private mount namespace where `repository` is a fresh tmpfs: first show that a rename from its
# parent into it fails as in compose, then write the repository there.
WRITER = """
import errno, json, os, sys
from pathlib import Path
from bge_triton.export.model_configs import BatchingOptions
from bge_triton.export.repository import write_repository
from bge_triton.model_facts import ModelFacts

facts_json, tokenizer, graph, repository = sys.argv[1:]
repository = Path(repository)
probe = repository.parent / "probe"
probe.mkdir()
try:
    probe.rename(repository / "probe")
    rename = "ok"
except OSError as exc:
    rename = errno.errorcode[exc.errno]
probe.rmdir()
facts = ModelFacts.from_json(Path(facts_json).read_text())
write_repository(repository, facts, tokenizer_json=Path(tokenizer), encoder_onnx=Path(graph), pooling_onnx=Path(graph),
                 input_names=["input_ids", "attention_mask"], target="container-gpu")
print(json.dumps({"rename": rename, "mount": os.path.ismount(repository),
                  "written": sorted(p.name for p in repository.iterdir())}))
"""


def _facts() -> ModelFacts:
    return ModelFacts(
        name="xdev", source="xdev", model_type="bert", dim=16, max_tokens=64, pooling="cls", normalize=True,
        query_instruction="", passage_instruction="", pad_token_id=0, uses_token_type_ids=False, vocab_size=21128,
    )  # fmt: skip


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    facts_file = tmp_path / "facts.json"
    facts_file.write_text(_facts().to_json())
    graph = export_pooling(_facts(), tmp_path / "graph.onnx")  # any valid graph: only copied here
    return facts_file, model_config_dir("bge-large-zh-v1.5") / "tokenizer.json", graph


def test_export_into_a_mounted_filesystem(tmp_path: Path, inputs: tuple[Path, Path, Path]) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    repository = tmp_path / "parent" / "models"
    repository.mkdir(parents=True)
    script = 'mount -t tmpfs none "$0" && exec "$@"'
    args = [sys.executable, "-c", WRITER, *map(str, inputs), str(repository)]
    run = subprocess.run(["unshare", "-r", "-m", "sh", "-c", script, str(repository), *args],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    if run.returncode != 0 and "mount" in run.stderr and "Traceback" not in run.stderr:
        pytest.skip(f"no private mount namespace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["mount"] is True
    assert result["rename"] == "EXDEV"  # the layout compose has: a rename from the parent cannot work
    assert result["written"] == FOLDERS  # and export still wrote every model, with no staging folder left


def test_staging_parent_is_inside_a_mount_point_and_beside_a_plain_folder(tmp_path: Path) -> None:
    plain = tmp_path / "repo"
    plain.mkdir()
    assert staging_parent(plain) == tmp_path
    shm = Path("/dev/shm")
    if shm.is_dir() and shm.is_mount():
        assert staging_parent(shm) == shm


def test_rename_refused_across_mounts_falls_back_to_a_copy(
    tmp_path: Path, inputs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two bind mounts of one filesystem share st_dev, yet the kernel refuses renames between them."""
    real_rename = Path.rename
    refused: list[str] = []

    def rename(self: Path, target: Path) -> Path:
        if self.parent.name.startswith(STAGING_PREFIX):  # from the staging folder into the repository
            refused.append(self.name)
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    repository = tmp_path / "models"
    _, tokenizer, graph = inputs
    write_repository(
        repository, _facts(), tokenizer_json=tokenizer, encoder_onnx=graph, pooling_onnx=graph,
        input_names=["input_ids", "attention_mask"], target="container-gpu",
    )  # fmt: skip
    assert sorted(refused) == FOLDERS
    assert sorted(p.name for p in repository.iterdir()) == FOLDERS
    assert (repository / "xdev-encoder/1/model.onnx").read_bytes() == graph.read_bytes()
    assert not [p for p in tmp_path.rglob(f"{STAGING_PREFIX}*")]


def test_move_folder_other_errors_propagate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "a"
    source.mkdir()

    def rename(self: Path, target: Path) -> Path:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(PermissionError):
        move_folder(source, tmp_path / "b")


def test_stale_staging_inside_the_repository_is_removed(tmp_path: Path, inputs: tuple[Path, Path, Path]) -> None:
    """A staging folder an export killed mid-way left inside the repository would stop Triton from starting."""
    repository = tmp_path / "models"
    stale = repository / f"{STAGING_PREFIX}killed" / "xdev-encoder"
    stale.mkdir(parents=True)
    _, tokenizer, graph = inputs
    write_repository(
        repository, _facts(), tokenizer_json=tokenizer, encoder_onnx=graph, pooling_onnx=graph,
        input_names=["input_ids", "attention_mask"], target="container-gpu",
    )  # fmt: skip
    assert sorted(p.name for p in repository.iterdir()) == FOLDERS  # the stale folder is gone
