"""The start-up canary: a few probe texts and their PyTorch FP32 vectors, stored at export, embedded again by the
running service before it says READY.

Export checks parity on the machine that exports. The machine that serves can differ (a GPU host running the
FP16 graph, another onnxruntime build, a TensorRT engine built at start-up), and a wrong vector with a 200 is the
worst answer this service can give. So the export stores the canary in the model facts (`ModelFacts.canary`), and
the proxy embeds its texts through each Triton replica before it routes requests there (client/proxy/replicas.py):
a replica whose vectors fall below the export's parity floor is never used, and `/ready` says why.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import numpy as np

# What the canary embeds: Chinese, English, mixed, and one text far over any window (the truncation path).
CANARY_TEXTS: tuple[str, ...] = (
    "今天天气很好，我们去公园散步吧。",
    "The quick brown fox jumps over the lazy dog.",
    "北京 is the capital of China, 上海是最大的城市。",
    "向量检索" * 300,
)


@dataclass(frozen=True)
class CanaryResult:
    passed: bool
    min_cosine: float
    floor: float

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"canary {verdict}: min cosine {self.min_cosine:.6f} against the export's reference (floor {self.floor})"


@dataclass(frozen=True)
class Canary:
    texts: tuple[str, ...]
    vectors: np.ndarray  # float32 [len(texts), dim], the PyTorch FP32 reference, L2-normalised
    floor: float  # the export's parity floor for this precision (export/parity.py PARITY_THRESHOLDS)

    def to_text(self) -> str:
        """Compact JSON for `ModelFacts.canary` (a config.pbtxt parameter: vectors as base64 float32)."""
        data = np.ascontiguousarray(self.vectors, dtype="<f4")
        return json.dumps(
            {"texts": list(self.texts), "dim": int(data.shape[1]), "floor": self.floor,
             "vectors": base64.b64encode(data.tobytes()).decode("ascii")},
            ensure_ascii=False, separators=(",", ":"),
        )  # fmt: skip

    @classmethod
    def from_text(cls, text: str) -> Canary:
        data = json.loads(text)
        texts = tuple(str(t) for t in data["texts"])
        vectors = np.frombuffer(base64.b64decode(data["vectors"]), dtype="<f4").reshape(len(texts), int(data["dim"]))
        return cls(texts=texts, vectors=vectors.astype(np.float32), floor=float(data["floor"]))

    def check(self, served: np.ndarray) -> CanaryResult:
        """The served vectors (same texts, passage side, truncated) against the stored reference."""
        served = np.asarray(served, dtype=np.float64)
        reference = self.vectors.astype(np.float64)
        if served.shape != reference.shape:
            return CanaryResult(False, float("nan"), self.floor)
        norms = np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1)
        cosines = (served * reference).sum(axis=1) / np.maximum(norms, 1e-12)
        low = float(cosines.min())
        return CanaryResult(bool(low >= self.floor), low, self.floor)
