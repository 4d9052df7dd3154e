"""Generated config.pbtxt files parse as Triton ModelConfig, for both encoder targets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.export.exporter import ExportResult
from bge_triton.export.model_configs import BatchingOptions, dynamic_batching
from bge_triton.export.onnx_export import encoder_input_names
from bge_triton.export.repository import write_repository
from bge_triton.model_facts import ModelFacts


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


@pytest.fixture(scope="module")
def both_targets(exported: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    repo = exported.ensemble_dir.parent
    name = exported.facts.name
    out = {}
    for target in ("local", "container-gpu"):
        dest = tmp_path_factory.mktemp(target)
        write_repository(
            dest,
            exported.facts,
            tokenizer_json=repo / f"{name}-tokenizer/1/tokenizer.json",
            encoder_onnx=repo / f"{name}-encoder/1/model.onnx",
            pooling_onnx=repo / f"{name}-pooling/1/model.onnx",
            input_names=encoder_input_names(exported.facts),
            target=target,  # type: ignore[arg-type]
            opts=BatchingOptions(max_batch_size=32),
        )
        out[target] = dest
    return out


@pytest.mark.parametrize("target", ["local", "container-gpu"])
def test_every_config_parses(both_targets: dict[str, Path], target: str) -> None:
    configs = sorted(both_targets[target].glob("*/config.pbtxt"))
    assert [p.parent.name for p in configs] == [
        "all-MiniLM-L6-v2", "all-MiniLM-L6-v2-encoder", "all-MiniLM-L6-v2-ids", "all-MiniLM-L6-v2-pooling",
        "all-MiniLM-L6-v2-tokenize", "all-MiniLM-L6-v2-tokenizer",
    ]  # fmt: skip
    for path in configs:
        config = _parse(path)
        assert config.name == path.parent.name
        assert config.max_batch_size == 32
        assert (path.parent / "1").is_dir()


def test_targets_differ_only_in_encoder_and_pooling(both_targets: dict[str, Path]) -> None:
    local, gpu = both_targets["local"], both_targets["container-gpu"]
    model = "all-MiniLM-L6-v2-tokenize"
    assert (local / model / "config.pbtxt").read_text() == (gpu / model / "config.pbtxt").read_text()
    # the ensembles differ in their steps only: on local the encoder tokenizes and pools (one step), on the GPU three
    for model in ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2-ids"):
        le, ge = (_parse(root / model / "config.pbtxt") for root in (local, gpu))
        assert [s.model_name for s in ge.ensemble_scheduling.step] == [
            "all-MiniLM-L6-v2-tokenizer", "all-MiniLM-L6-v2-encoder", "all-MiniLM-L6-v2-pooling"]  # fmt: skip
        assert [s.model_name for s in le.ensemble_scheduling.step] == ["all-MiniLM-L6-v2-encoder"]
        for config in (le, ge):  # and in the export's digest of the folders (their encoder configs differ)
            config.ClearField("ensemble_scheduling")
            if "fingerprint" in config.parameters:
                del config.parameters["fingerprint"]
        assert le == ge
    # the tokenizer differs in its padding widths only: fixed buckets for the onnxruntime backend (gpu_target.py),
    # and so it waits to gather requests that will share a width, like the encoder
    lt, gt = (_parse(root / "all-MiniLM-L6-v2-tokenizer/config.pbtxt") for root in (local, gpu))
    assert lt.parameters["pad_buckets"].string_value == ""
    assert gt.parameters["pad_buckets"].string_value == "16,32,64,128,256"  # MiniLM's window: 256
    assert (lt.dynamic_batching.max_queue_delay_microseconds, gt.dynamic_batching.max_queue_delay_microseconds) == (
        0, 2000)  # fmt: skip
    del lt.parameters["pad_buckets"], gt.parameters["pad_buckets"]
    gt.dynamic_batching.max_queue_delay_microseconds = 0
    assert lt == gt
    for model in ("all-MiniLM-L6-v2-encoder", "all-MiniLM-L6-v2-pooling"):
        lc, gc = _parse(local / model / "config.pbtxt"), _parse(gpu / model / "config.pbtxt")
        assert lc.backend == "python" and not lc.platform
        assert lc.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
        assert all(i.allow_ragged_batch for i in lc.input if i.name != "TEXT")  # the folded encoder's TEXT: [1]
        assert (local / model / "1/model.py").is_file()
        assert gc.platform == "onnxruntime_onnx" and gc.default_model_filename == "model.onnx"
        assert gc.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert not any(i.allow_ragged_batch for i in gc.input)
        assert not (gpu / model / "1/model.py").exists()
        # the very same ONNX file for both targets
        assert (local / model / "1/model.onnx").read_bytes() == (gpu / model / "1/model.onnx").read_bytes()


def test_ensemble_chains_tokenizer_encoder_pooling(both_targets: dict[str, Path], exported: ExportResult) -> None:
    gpu = _parse(both_targets["container-gpu"] / "all-MiniLM-L6-v2/config.pbtxt")
    assert gpu.platform == "ensemble"
    steps = gpu.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [
        "all-MiniLM-L6-v2-tokenizer", "all-MiniLM-L6-v2-encoder", "all-MiniLM-L6-v2-pooling",
    ]  # fmt: skip
    assert dict(steps[2].output_map) == {"embedding": "EMBEDDING"}
    config = _parse(both_targets["local"] / "all-MiniLM-L6-v2/config.pbtxt")  # the encoder tokenizes and pools
    assert config.platform == "ensemble"
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["all-MiniLM-L6-v2-encoder"]
    assert dict(steps[0].input_map) == {"TEXT": "TEXT"}
    assert dict(steps[0].output_map) == {
        "embedding": "EMBEDDING", "TOKEN_COUNT": "TOKEN_COUNT", "FULL_TOKEN_COUNT": "FULL_TOKEN_COUNT"}  # fmt: skip
    assert [(o.name, list(o.dims)) for o in config.output] == [
        ("EMBEDDING", [384]), ("TOKEN_COUNT", [1]), ("FULL_TOKEN_COUNT", [1]),
    ]  # fmt: skip
    params = {k: v.string_value for k, v in config.parameters.items()}
    # the facts of the export, but for the fingerprint: it digests the configs, and these ask max_batch_size 32
    facts = ModelFacts.from_parameters(params)
    assert facts.fingerprint and facts.fingerprint != exported.facts.fingerprint
    assert dataclasses.replace(facts, fingerprint=exported.facts.fingerprint) == exported.facts
    saved = json.loads((both_targets["local"] / "all-MiniLM-L6-v2/model_facts.json").read_text())
    assert ModelFacts.from_dict(saved) == facts


@pytest.mark.parametrize(("target", "encoder_wait"), [("local", 0), ("container-gpu", 2000)])
def test_dynamic_batching_configured(both_targets: dict[str, Path], target: str, encoder_wait: int) -> None:
    for model in ("tokenizer", "encoder", "pooling"):
        config = _parse(both_targets[target] / f"all-MiniLM-L6-v2-{model}/config.pbtxt")
        assert config.HasField("dynamic_batching")
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        # Only the encoder waits to fill a batch, and only on the GPU target (with the tokenizer, whose wait
        # makes requests share a padded width); on local a lone query never waits (issue 19). The steps around
        # it batch what queued and never wait.
        waits = {"encoder": encoder_wait, "tokenizer": 2000 if target == "container-gpu" else 0}
        assert config.dynamic_batching.max_queue_delay_microseconds == waits.get(model, 0)
        # No queue policy by default: Triton's batcher prefetches batches only for a model without one (its
        # PriorityQueue::SupportPrefetching); with one it stalled all in-flight requests ~0.6 s under load.
        assert not config.dynamic_batching.HasField("default_queue_policy")


def test_a_queue_policy_is_written_when_asked_for() -> None:
    config = mc.ModelConfig()
    dynamic_batching(config, BatchingOptions(max_queue_size=100, queue_timeout_us=5_000_000), waits=True)
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (100, 5_000_000)
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT and policy.allow_timeout_override
    bare = mc.ModelConfig()
    dynamic_batching(bare, BatchingOptions(), waits=True)
    assert bare.HasField("dynamic_batching") and not bare.dynamic_batching.HasField("default_queue_policy")


def test_ids_ensemble_shares_the_chain_and_takes_token_ids(both_targets: dict[str, Path]) -> None:
    config = _parse(both_targets["local"] / "all-MiniLM-L6-v2-ids/config.pbtxt")
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("TOKEN_IDS", mc.TYPE_INT64, [-1])]
    steps = config.ensemble_scheduling.step
    assert dict(steps[0].input_map) == {"TOKEN_IDS": "TOKEN_IDS"}
    assert [s.model_name for s in steps] == ["all-MiniLM-L6-v2-encoder"]  # which tokenizes and pools (local)
    tokenizer = _parse(both_targets["local"] / "all-MiniLM-L6-v2-tokenizer/config.pbtxt")
    assert [(i.name, i.optional) for i in tokenizer.input] == [("TEXT", True), ("TOKEN_IDS", True)]


def test_tensorrt_accelerator_for_the_gpu_target(exported: ExportResult, tmp_path: Path) -> None:
    repo, name = exported.ensemble_dir.parent, exported.facts.name
    files = {
        "tokenizer_json": repo / f"{name}-tokenizer/1/tokenizer.json",
        "encoder_onnx": repo / f"{name}-encoder/1/model.onnx",
        "pooling_onnx": repo / f"{name}-pooling/1/model.onnx",
        "input_names": encoder_input_names(exported.facts),
    }
    write_repository(tmp_path, exported.facts, target="container-gpu", opts=BatchingOptions(tensorrt=True), **files)
    encoder = _parse(tmp_path / f"{name}-encoder/config.pbtxt")
    [accelerator] = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    with pytest.raises(ValueError, match="container-gpu"):
        write_repository(tmp_path / "x", exported.facts, target="local", opts=BatchingOptions(tensorrt=True), **files)
