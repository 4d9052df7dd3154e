"""The PyTorch reference embedding and the export's parity check against it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bge_triton.model_facts import ModelFacts
from bge_triton.triton_models.onnx_runner import PaddedOnnxRunner
from bge_triton.triton_models.tokenizer import TextTokenizer

from .onnx_export import Pooler

# Minimum cosine between the exported pipeline and PyTorch, per precision.
PARITY_THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99}

# A fixed probe list: Chinese, English, mixed, emoji, odd whitespace and over-length texts.
PROBE_TEXTS: list[str] = [
    "今天天气很好，我们去公园散步吧。",
    "如何在生产环境中部署文本向量模型？",
    "样例数据-1",
    "The quick brown fox jumps over the lazy dog.",
    "Triton Inference Server batches requests dynamically.",
    "用 Triton 部署 BGE embedding 模型，QPS 提升了 3 倍。",
    "北京 is the capital of China, 上海是最大的城市。",
    "🙂👍🚀 emoji only? 😀",
    "🎉🎉🎉",
    "   leading and trailing spaces   ",
    "a",
    "向量检索" * 300,  # far beyond 512 tokens: truncated
    " ".join(["embedding"] * 700),  # over-length English
]


@dataclass
class ParityReport:
    precision: str
    threshold: float
    texts: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    passed: bool
    int8_scope: str = ""  # which MatMuls were quantised (int8 only)
    optimized: bool = False  # the encoder went through ONNX Runtime's transformer optimiser (fused ops)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


class TorchReference:
    """transformers' AutoTokenizer + AutoModel + the model's pooling: what the service must equal."""

    def __init__(self, checkpoint: Path, facts: ModelFacts, model: torch.nn.Module | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.facts = facts
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self.model = model if model is not None else AutoModel.from_pretrained(str(checkpoint), dtype=torch.float32)
        self.model.eval()
        self.pooler = Pooler(facts.pooling, facts.normalize)

    def token_counts(self, texts: list[str]) -> list[int]:
        enc = self.tokenizer(texts, truncation=True, max_length=self.facts.max_tokens)
        return [len(ids) for ids in enc["input_ids"]]

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=self.facts.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
            if self.facts.uses_token_type_ids and "token_type_ids" in enc:
                kwargs["token_type_ids"] = enc["token_type_ids"]
            hidden = self.model(**kwargs).last_hidden_state
            out.append(self.pooler(hidden, enc["attention_mask"]).numpy())
        return np.concatenate(out, axis=0).astype(np.float32)


class OnnxPipeline:
    """The exported pipeline run in-process with the same code the Triton models run."""

    def __init__(
        self, tokenizer_json: Path, encoder_onnx: Path, pooling_onnx: Path, facts: ModelFacts, *, threads: int = 0
    ):
        self.facts = facts
        self.tokenizer = TextTokenizer(tokenizer_json, facts.max_tokens, facts.pad_token_id)
        self.encoder = PaddedOnnxRunner(encoder_onnx, threads=threads, pad_values={"input_ids": facts.pad_token_id})
        self.pooling = PaddedOnnxRunner(pooling_onnx, threads=threads)

    def embed(self, texts: list[str], batch_size: int = 16) -> np.ndarray:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer.encode(texts[start : start + batch_size])
            feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
            if "token_type_ids" in self.encoder.input_names:
                feeds["token_type_ids"] = batch.token_type_ids
            hidden = self.encoder.run([feeds])[0]["last_hidden_state"]
            pooled = self.pooling.run([{"last_hidden_state": hidden, "attention_mask": batch.attention_mask}])
            out.append(pooled[0]["embedding"])
        return np.concatenate(out, axis=0).astype(np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    return (a * b).sum(axis=1)


def compare(
    reference: np.ndarray, candidate: np.ndarray, precision: str, int8_scope: str = "", *, optimized: bool = False
) -> ParityReport:
    cos = cosine_rows(reference, candidate)
    threshold = PARITY_THRESHOLDS[precision]
    return ParityReport(
        precision=precision,
        threshold=threshold,
        texts=len(cos),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        max_abs_diff=float(np.abs(reference - candidate).max()),
        passed=bool(cos.min() >= threshold),
        int8_scope=int8_scope,
        optimized=optimized,
    )
