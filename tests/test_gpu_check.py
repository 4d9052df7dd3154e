"""The prepared GPU check (bench/gpu/run.sh -> bench/gpu_check.py) in its dry run: every step on the CPU with a
scaled-down bge-large-zh-v1.5, so the script cannot rot between GPU runs (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_measures_every_system(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "BGE_GPU_CARRY": str(tmp_path / "no-carry"), "PYTHON": sys.executable,
           "BGE_GPU_WORK": str(tmp_path / "work")}  # fmt: skip
    done = subprocess.run(
        ["bash", str(ROOT / "bench/gpu/run.sh"), str(out), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu"
    assert report["parity"]["passed"] and report["parity"]["min_cosine"] >= 0.9999
    systems = report["workloads"]["medium"]["systems"]
    assert set(systems) == {"sentence-transformers", "torch", "triton", "proxy"}
    for name, result in systems.items():
        assert "error" not in result, (name, result)
        assert result["texts_per_s"] > 0 and result["latency_c1_ms"]["p50"] > 0, (name, result)
    assert {"triton_vs_torch", "triton_vs_sentence_transformers"} <= set(report["workloads"]["medium"]["ratios"])
    assert (out / "nvidia-smi.txt").is_file() and (out / "host.txt").is_file()
    assert not (out / "work").exists()  # the checkpoint and repository stay out of the results folder
