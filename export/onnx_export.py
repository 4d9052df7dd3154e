"""Export the encoder and the pooling step to ONNX (dynamic batch and sequence axes)."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from bge_triton.model_facts import ModelFacts

if TYPE_CHECKING:
    import onnx

OPSET = 17
SEQUENCE = "sequence"  # the dynamic axis name the ONNX runner pads along
# Graphs whose weights exceed this are written as `<file>` + `<file>.data` (ONNX external data): protobuf
# cannot serialise a message over 2 GiB, and bge-m3's fp32 encoder is ~2.2 GB.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000
log = logging.getLogger(__name__)


class EncoderForExport(nn.Module):
    """Calls the transformers model with keyword arguments (positional calls break on `use_cache`)."""

    def __init__(self, model: nn.Module, uses_token_type_ids: bool):
        super().__init__()
        self.model = model
        self.uses_token_type_ids = uses_token_type_ids

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.uses_token_type_ids:
            kwargs["token_type_ids"] = rest[0]
        return self.model(**kwargs).last_hidden_state


class Pooler(nn.Module):
    """sentence-transformers' pooling modes, then optional L2 normalisation, in float32."""

    def __init__(self, pooling: str, normalize: bool):
        super().__init__()
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = last_hidden_state.float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "mean":
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).max(dim=1).values
        elif self.pooling == "lasttoken":
            last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
            pooled = hidden[torch.arange(hidden.shape[0]), last]
        else:
            raise ValueError(f"unknown pooling {self.pooling!r}")
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2.0, dim=-1)
        return pooled


def load_encoder(checkpoint: Path) -> nn.Module:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    return model


def encoder_input_names(facts: ModelFacts) -> list[str]:
    names = ["input_ids", "attention_mask"]
    if facts.uses_token_type_ids:
        names.append("token_type_ids")
    return names


def export_encoder(
    model: nn.Module,
    facts: ModelFacts,
    out: Path,
    *,
    fusable_attention: bool = False,
    external_data_threshold: int = EXTERNAL_DATA_THRESHOLD_BYTES,
) -> Path:
    """The encoder as ONNX. `fusable_attention` traces the "eager" attention (explicit MatMul/Softmax), the
    pattern ONNX Runtime's transformer optimiser fuses; the default SDPA export is a pattern it does not know.
    Weights over `external_data_threshold` bytes go to `<out>.data` beside the graph (0 forces it)."""
    with _attention_implementation(model, "eager" if fusable_attention else None):
        return _export_encoder(model, facts, out, external_data_threshold)


@contextlib.contextmanager
def _attention_implementation(model: nn.Module, implementation: str | None) -> Iterator[None]:
    setter = getattr(model, "set_attn_implementation", None)
    previous = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if implementation is None or setter is None or previous in (None, implementation):
        yield
        return
    setter(implementation)
    try:
        yield
    finally:
        setter(previous)


def _export_encoder(model: nn.Module, facts: ModelFacts, out: Path, external_data_threshold: int) -> Path:
    wrapper = EncoderForExport(model, facts.uses_token_type_ids).eval()
    names = encoder_input_names(facts)
    batch, seq = 2, 16
    dummy = [
        torch.full((batch, seq), 100, dtype=torch.int64),
        torch.ones((batch, seq), dtype=torch.int64),
        torch.zeros((batch, seq), dtype=torch.int64),
    ][: len(names)]
    axes = {name: {0: "batch", 1: SEQUENCE} for name in names}
    axes["last_hidden_state"] = {0: "batch", 1: SEQUENCE}
    export_module(
        wrapper, tuple(dummy), out, names, ["last_hidden_state"], axes, external_data_threshold=external_data_threshold
    )
    return out


def export_pooling(facts: ModelFacts, out: Path) -> Path:
    pooler = Pooler(facts.pooling, facts.normalize).eval()
    dummy = (torch.randn(2, 16, facts.dim), torch.ones(2, 16, dtype=torch.int64))
    axes = {
        "last_hidden_state": {0: "batch", 1: SEQUENCE},
        "attention_mask": {0: "batch", 1: SEQUENCE},
        "embedding": {0: "batch"},
    }
    export_module(pooler, dummy, out, ["last_hidden_state", "attention_mask"], ["embedding"], axes)
    keep_mask_input(out)
    return pin_output_dims(out, "embedding", ["batch", facts.dim])


def keep_mask_input(graph: Path) -> Path:
    """Declare `attention_mask` as a graph input even where the pooling does not read it (CLS): the exporter drops
    unused inputs, and Triton's onnxruntime backend refuses a config that lists more inputs than the graph has
    ("configuration expects 2 inputs, model provides 1")."""
    import onnx

    model = onnx.load(str(graph))
    if any(i.name == "attention_mask" for i in model.graph.input):
        return graph
    model.graph.input.append(
        onnx.helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch", SEQUENCE])
    )
    onnx.save_model(model, str(graph))
    return graph


def pin_output_dims(graph: Path, output: str, dims: list[int | str]) -> Path:
    """Write `dims` (ints static, strings symbolic) into the declared shape of `output`. The TorchScript exporter
    leaves some static sizes symbolic (last-token pooling + normalisation declares `[batch, Divembedding_dim_1]`),
    and Triton's onnxruntime backend compares a graph's output dims with the config's exactly: a symbolic dim
    against `dim` refuses to load the model."""
    import onnx

    model = onnx.load(str(graph))
    (value,) = [o for o in model.graph.output if o.name == output]
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        if isinstance(d, int):
            shape.dim.add().dim_value = d
        else:
            shape.dim.add().dim_param = d
    onnx.save_model(model, str(graph))
    return graph


def export_module(
    module: nn.Module,
    args: tuple,
    out: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict,
    *,
    external_data_threshold: int | None = None,
) -> Path:
    """torch.onnx (TorchScript exporter, opset 17). With `external_data_threshold` set and the module's weights
    over it, the graph is written as `out` + `out.data` (all tensors in one external data file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    external = external_data_threshold is not None and weight_bytes(module) > external_data_threshold
    # Over 2 GiB, the exporter itself writes one file per tensor beside its output: a scratch folder
    # keeps those apart, and they are gathered into the one `<out>.data` file.
    scratch = out.parent / f".{out.name}.scratch"
    target = scratch / "model.onnx" if external else out
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about python control flow in HF code
            torch.onnx.export(
                module,
                args,
                str(target),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        if external:
            import onnx

            save_onnx(onnx.load(str(target)), out, external=True)
    finally:
        if external:
            shutil.rmtree(scratch, ignore_errors=True)
    return out


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers (what the exported graph's initializers hold)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def external_data_file(graph: Path) -> Path:
    """Where `save_onnx` puts a graph's external data: `<graph>.data` beside it."""
    return graph.with_name(graph.name + ".data")


def save_onnx(model: onnx.ModelProto, out: Path, *, external: bool) -> Path:
    """Save a graph, with all its weights in `<out>.data` when `external` (needed past protobuf's 2 GiB)."""
    import onnx

    data = external_data_file(out)
    if data.exists():
        data.unlink()  # onnx appends to an existing data file
    if external:
        onnx.save_model(
            model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
            size_threshold=1024,
        )  # fmt: skip
    else:
        onnx.save_model(model, str(out))
    return out


def uses_external_data(graph: Path) -> bool:
    """Whether a saved graph keeps (some of) its tensors in external data files."""
    return bool(external_data_locations(graph))


def external_data_locations(graph: Path) -> list[str]:
    """The external data files a graph refers to (relative to its folder), in order of first use."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    model = onnx.load(str(graph), load_external_data=False)
    locations: list[str] = []
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            location = next(e.value for e in tensor.external_data if e.key == "location")
            if location not in locations:
                locations.append(location)
    return locations


def optimize_encoder(fp32_path: Path, out: Path, *, num_heads: int = 0, hidden_size: int = 0) -> Path:
    """ONNX Runtime's transformer optimiser (model type "bert") on the fp32 encoder graph.

    Fuses the embeddings (EmbedLayerNormalization), self-attention (Attention, packed QKV), residual +
    LayerNorm (SkipLayerNormalization) and bias + GELU (BiasGelu) into com.microsoft operators that the
    plain CPUExecutionProvider runs. It runs on the fp32 graph, before fp16 conversion or int8
    quantisation (what ONNX Runtime's quantisation guide asks for transformer models). Only the Python
    fusions run (opt_level 0): onnxruntime applies its own graph optimisations when a session loads the
    model anyway, and its offline pass would rewrite opset imports and cannot write graphs over 2 GB.
    The attention keeps the raw [batch, sequence] mask (not the "mask index" of right-padded lengths),
    so any attention mask means what it means in PyTorch. Inputs, outputs and their axis names
    ("batch", "sequence") are kept.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    source = onnx.load(str(fp32_path), load_external_data=False)
    external = uses_external_data(fp32_path)
    if external_data_file(out).exists():
        external_data_file(out).unlink()  # onnx appends to an existing data file
    with _quiet_root_logger():  # the optimiser logs every step at INFO
        optimized = optimize_model(
            str(fp32_path),
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            optimization_options=options,
            opt_level=0,
            use_gpu=False,
        )
        fused = {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}
        _check_io_kept(source, optimized.model)
        optimized.save_model_to_file(str(out), use_external_data_format=external)
    log.info("transformer optimiser fused %s", ", ".join(f"{n} {op}" for op, n in fused.items()) or "nothing")
    return out


def fused_operators(graph_path: Path) -> dict[str, int]:
    """com.microsoft operators in a graph and how many of each (what the optimiser fused)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(graph_path), load_external_data=False).graph.node:
        if node.domain == "com.microsoft":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def config_attention_shape(checkpoint: Path) -> tuple[int, int]:
    """(num_heads, hidden_size) from the checkpoint's config.json; 0 lets the optimiser read the graph."""
    config = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    return int(config.get("num_attention_heads") or 0), int(config.get("hidden_size") or 0)


def _io_signature(model: onnx.ModelProto) -> list[tuple[str, int, list[str | int]]]:
    tensors = [*model.graph.input, *model.graph.output]
    return [
        (t.name, t.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim])
        for t in tensors
    ]


def _check_io_kept(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """The optimised graph must keep the names, types and axis names ("batch", "sequence") of its I/O."""
    if _io_signature(before) != _io_signature(after):
        raise RuntimeError(
            f"the optimiser changed the graph's inputs/outputs: {_io_signature(before)} -> {_io_signature(after)}"
        )


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime's Python tools warn on the root logger (pre-processing hints, shape inference)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# INT8 scopes, tried in order until parity holds: small models such as MiniLM lose too much
# when the feed-forward projections (activations with outliers after GELU) are quantised too.
# The Q/K/V projections are quantised in every scope: as MatMuls in a plain graph, as the fused
# Attention's packed weight (QAttention) in an optimised one. The FFN MatMuls keep their exported
# names through the optimiser's fusions (their bias and GELU/residual fuse into the next node), so
# the same name patterns find them in both graphs.
INT8_SCOPES: tuple[str, ...] = ("all-matmuls", "keep-ffn-output-fp32", "attention-only")


def _int8_excluded(graph_path: Path, scope: str) -> list[str]:
    import onnx

    names = [n.name for n in onnx.load(str(graph_path), load_external_data=False).graph.node if n.op_type == "MatMul"]
    ffn_out = [n for n in names if "/output/dense/" in n and "/attention/" not in n]
    ffn_in = [n for n in names if "/intermediate/" in n]
    excluded = {"all-matmuls": [], "keep-ffn-output-fp32": ffn_out, "attention-only": ffn_out + ffn_in}[scope]
    if scope != "all-matmuls" and not excluded:
        log.warning("int8 scope %s: no feed-forward MatMul found by name in %s", scope, graph_path.name)
    return excluded


def convert_precision(
    fp32_path: Path, precision: str, out: Path, *, int8_scope: str = "all-matmuls", optimized: bool = False
) -> Path:
    """fp16 (inputs/outputs stay fp32 and int64) or int8 dynamic quantisation of an fp32 graph.

    `optimized`: the graph came from `optimize_encoder` (fused com.microsoft operators)."""
    if precision == "fp32":
        return fp32_path
    external = uses_external_data(fp32_path)  # a graph with external data stays so (the file name follows `out`)
    if external and external_data_file(out).exists():
        external_data_file(out).unlink()
    if precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(fp32_path))
        if optimized:
            # The optimiser's own path: symbolic shape inference knows the fused operators' types.
            from onnxruntime.transformers.onnx_model import OnnxModel

            fused = OnnxModel(model)
            with _quiet_root_logger():
                fused.convert_float_to_float16(keep_io_types=True)
                fused.save_model_to_file(str(out), use_external_data_format=external)
            return out
        converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        return save_onnx(converted, out, external=external)
    if precision == "int8":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _quiet_root_logger():  # quantize_dynamic warns on the root logger about pre-processing
            quantize_dynamic(
                str(fp32_path),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Attention"],
                nodes_to_exclude=_int8_excluded(fp32_path, int8_scope),
                use_external_data_format=external,
                extra_options={
                    "MatMulConstBOnly": True,  # weights only; activation x activation stays fp32
                    # ONNX shape inference gives no types past com.microsoft operators; all are float here.
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                },
            )
        return out
    raise ValueError(f"unknown precision {precision!r} (fp32, fp16, int8)")
