"""onnxruntime's intra-op threads stop spinning at the end of each run unless asked (issue 19): on a small host a
spinning pool took the cores the tokenizer, Triton and the proxy need for the same request."""

from __future__ import annotations

import pytest

from bge_triton.export.exporter import ExportResult
from bge_triton.triton_models.onnx_runner import DEFAULT_SPINNING, onnx_session, spinning_mode

ENTRIES = ("session.intra_op.allow_spinning", "session.force_spinning_stop")


def _entries(session: object) -> dict[str, str]:
    options = session.get_session_options()  # type: ignore[attr-defined]
    found = {}
    for key in ENTRIES:
        try:
            found[key] = options.get_session_config_entry(key)
        except Exception:  # onnxruntime raises for a key never set
            continue
    return found


def test_default_spins_only_inside_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGE_TRITON_ORT_SPINNING", raising=False)
    assert DEFAULT_SPINNING == "run"
    assert spinning_mode() == "run"
    assert spinning_mode("off") == "off"  # the config parameter
    monkeypatch.setenv("BGE_TRITON_ORT_SPINNING", "ON")  # the environment wins over the config parameter
    assert spinning_mode("off") == "on"


def test_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BGE_TRITON_ORT_SPINNING", raising=False)
    with pytest.raises(ValueError, match="one of off, run, on"):
        spinning_mode("sometimes")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("off", {"session.intra_op.allow_spinning": "0"}),
        ("run", {"session.force_spinning_stop": "1"}),
        ("on", {}),
    ],
)
def test_session_options_carry_the_mode(
    exported: ExportResult, monkeypatch: pytest.MonkeyPatch, mode: str, expected: dict[str, str]
) -> None:
    monkeypatch.delenv("BGE_TRITON_ORT_SPINNING", raising=False)
    repo, name = exported.ensemble_dir.parent, exported.facts.name
    session = onnx_session(repo / f"{name}-pooling/1/model.onnx", threads=2, spinning=mode)
    assert {k: v for k, v in _entries(session).items() if v} == expected
