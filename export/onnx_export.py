"""Export the encoder and the pooling step to ONNX (dynamic batch and sequence axes)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from bge_triton.model_facts import ModelFacts

OPSET = 17
SEQUENCE = "sequence"  # the dynamic axis name the ONNX runner pads along
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


def export_encoder(model: nn.Module, facts: ModelFacts, out: Path) -> Path:
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
    _export(wrapper, tuple(dummy), out, names, ["last_hidden_state"], axes)
    return out


def export_pooling(facts: ModelFacts, out: Path) -> Path:
    pooler = Pooler(facts.pooling, facts.normalize).eval()
    dummy = (torch.randn(2, 16, facts.dim), torch.ones(2, 16, dtype=torch.int64))
    axes = {
        "last_hidden_state": {0: "batch", 1: SEQUENCE},
        "attention_mask": {0: "batch", 1: SEQUENCE},
        "embedding": {0: "batch"},
    }
    _export(pooler, dummy, out, ["last_hidden_state", "attention_mask"], ["embedding"], axes)
    return out


def _export(module: nn.Module, args: tuple, out: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in HF code
        torch.onnx.export(
            module,
            args,
            str(out),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


# INT8 scopes, tried in order until parity holds: small models such as MiniLM lose too much
# when the feed-forward projections (activations with outliers after GELU) are quantised too.
INT8_SCOPES: tuple[str, ...] = ("all-matmuls", "keep-ffn-output-fp32", "attention-only")


def _int8_excluded(graph_path: Path, scope: str) -> list[str]:
    import onnx

    names = [n.name for n in onnx.load(str(graph_path), load_external_data=False).graph.node if n.op_type == "MatMul"]
    ffn_out = [n for n in names if "/output/dense/" in n and "/attention/" not in n]
    ffn_in = [n for n in names if "/intermediate/" in n]
    return {"all-matmuls": [], "keep-ffn-output-fp32": ffn_out, "attention-only": ffn_out + ffn_in}[scope]


def convert_precision(fp32_path: Path, precision: str, out: Path, *, int8_scope: str = "all-matmuls") -> Path:
    """fp16 (inputs/outputs stay fp32 and int64) or int8 dynamic quantisation of an fp32 graph."""
    if precision == "fp32":
        return fp32_path
    if precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx.load(str(fp32_path))
        converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        onnx.save(converted, str(out))
        return out
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic warns on the root logger about pre-processing
        try:
            quantize_dynamic(
                str(fp32_path),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=_int8_excluded(fp32_path, int8_scope),
                extra_options={"MatMulConstBOnly": True},  # weights only; activation x activation stays fp32
            )
        finally:
            root.setLevel(level)
        return out
    raise ValueError(f"unknown precision {precision!r} (fp32, fp16, int8)")
