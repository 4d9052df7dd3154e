"""container-gpu configs: padding buckets, the token budget, encoder instances, TensorRT profiles and warm-up, and
the option combinations export refuses (issue 16 §5, §6 and the int8 risk)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton import cli
from bge_triton.export import exporter
from bge_triton.export.gpu_target import TRT_CACHE_PATH, ExportOptionsError, default_buckets, resolve_options
from bge_triton.export.model_configs import BatchingOptions
from bge_triton.export.onnx_export import export_pooling
from bge_triton.export.repository import write_repository
from bge_triton.model_facts import ModelFacts
from bge_triton.package_data import model_config_dir
from bge_triton.triton_models.tokenizer import TextTokenizer

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def _facts(max_tokens: int = 512, name: str = "bge") -> ModelFacts:
    return ModelFacts(
        name=name, source=name, model_type="bert", dim=16, max_tokens=max_tokens, pooling="cls", normalize=True,
        query_instruction="", passage_instruction="", pad_token_id=0, uses_token_type_ids=True, vocab_size=21128,
    )  # fmt: skip


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def _write(tmp_path: Path, facts: ModelFacts, target: str, opts: BatchingOptions) -> Path:
    graph = export_pooling(facts, tmp_path / "graph.onnx")  # any valid graph: only copied
    repository = tmp_path / "repo"
    write_repository(
        repository, facts, tokenizer_json=model_config_dir("bge-large-zh-v1.5") / "tokenizer.json",
        encoder_onnx=graph, pooling_onnx=graph, input_names=INPUTS, target=target, opts=opts,  # type: ignore[arg-type]
    )  # fmt: skip
    return repository


def test_default_buckets_double_up_to_the_window() -> None:
    assert default_buckets(512) == (16, 32, 64, 128, 256, 512)
    assert default_buckets(384) == (16, 32, 64, 128, 256, 384)
    assert default_buckets(8192) == (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def test_gpu_defaults_and_the_token_budget() -> None:
    bge = resolve_options(BatchingOptions(), "container-gpu", 512)
    assert (bge.max_batch_size, bge.encoder_instances, bge.max_batch_tokens) == (64, 2, 65536)  # 64 x 512 fits
    m3 = resolve_options(BatchingOptions(), "container-gpu", 8192)
    assert m3.max_batch_size == 8 and m3.max_batch_size * 8192 <= m3.max_batch_tokens  # not 64 x 8192 rows
    tight = resolve_options(BatchingOptions(max_batch_tokens=16384), "container-gpu", 8192)
    assert tight.max_batch_size == 2
    local = resolve_options(BatchingOptions(), "local", 8192)
    assert (local.max_batch_size, local.encoder_instances, local.pad_buckets, local.max_batch_tokens) == (
        64, 1, (), 16384)  # fmt: skip
    own = resolve_options(BatchingOptions(pad_buckets=(32, 128), encoder_instances=3), "container-gpu", 512)
    assert own.pad_buckets == (32, 128, 512) and own.encoder_instances == 3  # the window is always a bucket


def test_gpu_repository_configs(tmp_path: Path) -> None:
    repository = _write(tmp_path, _facts(8192, "m3"), "container-gpu", BatchingOptions())
    tokenizer = _parse(repository / "m3-tokenizer/config.pbtxt")
    assert tokenizer.parameters["pad_buckets"].string_value == "16,32,64,128,256,512,1024,2048,4096,8192"
    encoder = _parse(repository / "m3-encoder/config.pbtxt")
    assert encoder.instance_group[0].count == 2 and encoder.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    # every model of the chain: an ensemble may not batch more than its steps
    assert {_parse(p).max_batch_size for p in repository.glob("*/config.pbtxt")} == {8}
    assert not encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert not encoder.model_warmup


def test_tensorrt_profiles_warmup_and_cache(tmp_path: Path) -> None:
    repository = _write(tmp_path, _facts(512), "container-gpu", BatchingOptions(tensorrt=True, max_batch_size=32))
    encoder = _parse(repository / "bge-encoder/config.pbtxt")
    [trt] = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(trt.parameters)
    assert trt.name == "tensorrt" and params["precision_mode"] == "FP16"
    assert params["trt_profile_min_shapes"] == "input_ids:1x16,attention_mask:1x16,token_type_ids:1x16"
    assert params["trt_profile_opt_shapes"] == "input_ids:16x128,attention_mask:16x128,token_type_ids:16x128"
    assert params["trt_profile_max_shapes"] == "input_ids:32x512,attention_mask:32x512,token_type_ids:32x512"
    assert params["trt_engine_cache_enable"] == "true" and params["trt_engine_cache_path"] == TRT_CACHE_PATH
    # warm-up at the profile's corners: the engine is built (or read from the cache) before the model is READY
    warmups = [
        (w.batch_size, {n: (list(i.dims), i.zero_data) for n, i in w.inputs.items()}) for w in encoder.model_warmup
    ]
    assert warmups == [
        (1, {n: ([16], True) for n in INPUTS}),
        (32, {n: ([512], True) for n in INPUTS}),
    ]
    pooling = _parse(repository / "bge-pooling/config.pbtxt")  # too small a graph to gain from TensorRT
    assert not pooling.optimization.execution_accelerators.gpu_execution_accelerator and not pooling.model_warmup


def test_tokenizer_pads_to_buckets_and_shares_runs() -> None:
    tok = TextTokenizer(model_config_dir("bge-large-zh-v1.5") / "tokenizer.json", 512, 0, 8, default_buckets(512))
    assert [tok.padded_width(n) for n in (1, 16, 17, 100, 300, 512)] == [16, 16, 32, 128, 512, 512]
    # runs of one execution share their widest bucket unless that pads a request to over twice its own bucket
    # (widths up to 64 always share)
    assert tok.shared_widths([5, 30, 60, 100, 120, 300, 20, 10]) == [64, 64, 64, 128, 128, 512, 32, 32]
    batches = tok.encode_groups([["短"], ["一个稍微长一点的句子" * 3]])
    assert [b.input_ids.shape[1] for b in batches] == [32, 32]  # 3 and 32 tokens: one width, bucket 32
    assert [int(b.token_count[0]) for b in batches] == [3, 32]
    plain = TextTokenizer(model_config_dir("bge-large-zh-v1.5") / "tokenizer.json", 512, 0, 8)
    assert plain.shared_widths([5, 30, 60]) == [8, 32, 64]  # local target: each request its own width


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "int8", "--target", "container-gpu"], "int8 is for CPUs"),
        (["--tensorrt"], "--tensorrt needs --target container-gpu"),
    ],
)
def test_export_refuses_before_any_work(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = cli.main(["export", "--model", str(tmp_path / "no-such-checkpoint"), "--repository", str(tmp_path), *args])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ExportOptionsError):
        exporter.export_model(str(tmp_path / "none"), tmp_path, precision="int8", target="container-gpu")


class StopExport(Exception):
    pass


def test_tensorrt_export_uses_the_plain_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """onnxruntime's fused com.microsoft ops (Attention, SkipLayerNormalization) are not TensorRT's: the graph
    would split into many small engines."""
    seen: dict[str, object] = {}

    def fake_export(model: str, repository: Path, **kwargs: object) -> object:
        seen.update(kwargs)
        raise StopExport

    monkeypatch.setattr(exporter, "export_model", fake_export)
    with pytest.raises(StopExport):  # the fake stops the command once it has its arguments
        cli.main(["export", "--model", "m", "--repository", str(tmp_path), "--target", "container-gpu", "--tensorrt"])
    assert seen["optimize"] is False
    assert seen["opts"].tensorrt is True  # type: ignore[attr-defined]


def test_one_repository_one_target(tmp_path: Path) -> None:
    """A local-target model in the folder compose mounts made the NGC tritonserver exit (its Python backend has
    no onnxruntime): export refuses to mix targets, and re-exporting one model for the other target is allowed."""
    repository = _write(tmp_path, _facts(512, "a"), "local", BatchingOptions())
    with pytest.raises(ExportOptionsError, match="already holds a-encoder for --target local"):
        _write(tmp_path, _facts(512, "b"), "container-gpu", BatchingOptions())
    assert sorted(p.name for p in repository.iterdir() if p.name.startswith("b")) == []
    _write(tmp_path, _facts(512, "b"), "local", BatchingOptions())  # same target: fine
    for folder in repository.glob("b*"):  # with b gone, a may be re-exported for the other target
        shutil.rmtree(folder)
    _write(tmp_path, _facts(512, "a"), "container-gpu", BatchingOptions())
    assert _parse(repository / "a-encoder/config.pbtxt").platform == "onnxruntime_onnx"
