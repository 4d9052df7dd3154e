"""Triton Python-backend model: the `local` target's encoder step with the tokenizer folded in (issue 19).

A text takes one Python-backend step instead of two: this model tokenizes it (`tokenizer.py`'s `TextTokenizer`, the
`<name>-tokenizer` model's code), runs the encoder with the pooling folded in (`onnx_runner.py`'s runner and
`PooledSession`) and answers the vector and the counts, so a request makes no tokenizer -> encoder hop (no second
stub process to wake, no shared-memory copy of the ids). Export copies this file to `<name>-encoder/1/model.py`
with `onnx_runner.py`, `tokenizer.py` and `tokenizer.json` beside it.

Inputs (one kind per request)
        TEXT             BYTES [batch, 1]   UTF-8 text (the `<name>` and bge-m3 ensembles)
        TOKEN_IDS        INT64 [batch, n]   token ids right-padded with -1 (the `<name>-ids` ensemble)
        input_ids, attention_mask[, token_type_ids]  the encoder's own inputs, as the `<name>-tokenizer` model
                         outputs them (the proxy's token-level routes call the two models one after the other)
Outputs, each only when asked for (an ensemble step asks for what it maps)
        embedding        FP32  [batch, dim] pooled and normalised as the model's facts say
        last_hidden_state FP32 [batch, seq, dim]
        INPUT_IDS, ATTENTION_MASK  INT64 [batch, seq]  what the encoder ran (bge-m3's heads read them)
        TOKEN_COUNT, FULL_TOKEN_COUNT  INT64 [batch, 1]  as the tokenizer model answers them
Bad input (not UTF-8, an id outside the vocabulary, two kinds in one request) fails that request alone with
INVALID_ARG, as the tokenizer model does.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np


def _sibling(file: str) -> ModuleType:
    """`file` from this file's folder, under a private module name: in a model folder the export's own copies
    (what its fingerprint digests), never another version the Python environment may hold."""
    name = f"_bge_triton_text_encoder_{file.removesuffix('.py')}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(file))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is being made
        spec.loader.exec_module(module)
    return module


_runner = _sibling("onnx_runner.py")
_tokenizer = _sibling("tokenizer.py")
OnnxRunnerModel = _runner.TritonPythonModel
InvalidText, TextTokenizer, TokenizedBatch = _tokenizer.InvalidText, _tokenizer.TextTokenizer, _tokenizer.TokenizedBatch
decode_texts = _tokenizer.decode_texts


def token_outputs(batch: TokenizedBatch) -> dict[str, np.ndarray]:
    """The tokenizer's answers this model can give next to the encoder's."""
    return {
        "INPUT_IDS": batch.input_ids,
        "ATTENTION_MASK": batch.attention_mask,
        "TOKEN_COUNT": batch.token_count.reshape(-1, 1),
        "FULL_TOKEN_COUNT": batch.full_token_count.reshape(-1, 1),
    }


class TritonPythonModel(OnnxRunnerModel):
    """Tokenizes the text requests of a batch in one `encode_groups` call, then runs every request's rows through the
    runner together (token-budgeted sub-batches), as the two models it replaces do one after the other."""

    def initialize(self, args: dict[str, str]) -> None:
        super().initialize(args)
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self._tokenizer = TextTokenizer.from_params(Path(args["model_repository"]) / args["model_version"], params)

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses: list = [None] * len(requests)
        batches: dict[int, TokenizedBatch] = {}
        given: dict[int, dict[str, np.ndarray]] = {}
        texts: list[tuple[int, list[str]]] = []
        for r, request in enumerate(requests):
            try:
                kind = self._read(request)
                if isinstance(kind, list):
                    texts.append((r, kind))
                elif isinstance(kind, TokenizedBatch):
                    batches[r] = kind
                else:
                    given[r] = kind
            except InvalidText as exc:
                responses[r] = pb.InferenceResponse(error=self._invalid(f"invalid input: {exc}"))
        if texts:
            try:
                tokenized = self._tokenizer.encode_groups([t for _, t in texts])
                batches.update(zip([r for r, _ in texts], tokenized, strict=True))
            except Exception as exc:  # a tokenizer failure is these requests' error, not the server's
                for r, _ in texts:
                    responses[r] = pb.InferenceResponse(error=pb.TritonError(f"tokenization failed: {exc}"))
        runnable = sorted([*batches, *given])
        feeds = [self._batch_feeds(batches[r]) if r in batches else given[r] for r in runnable]
        extras = [token_outputs(batches[r]) if r in batches else self._given_outputs(given[r]) for r in runnable]
        answered = self.run_requests([requests[r] for r in runnable], feeds, extras)
        for r, response in zip(runnable, answered, strict=True):
            responses[r] = response
        return responses

    def _read(self, request: Any) -> list[str] | TokenizedBatch | dict[str, np.ndarray]:
        """One request's input: its texts, its token ids tokenized, or the encoder's own inputs."""
        pb = self._pb
        text = pb.get_input_tensor_by_name(request, "TEXT")
        token_ids = pb.get_input_tensor_by_name(request, "TOKEN_IDS")
        own = {n: pb.get_input_tensor_by_name(request, n) for n in self._runner.input_names}
        sent = [kind for kind, present in (("TEXT", text), ("TOKEN_IDS", token_ids)) if present is not None]
        if any(tensor is not None for tensor in own.values()):
            sent.append(", ".join(self._runner.input_names))
        if len(sent) != 1:
            raise InvalidText(
                f"send exactly one of TEXT, TOKEN_IDS or the encoder's inputs ({', '.join(self._runner.input_names)})"
                + (f"; got {' and '.join(sent)}" if sent else "")
            )
        if text is not None:
            return decode_texts(text.as_numpy())
        if token_ids is not None:
            return self._tokenizer.encode_ids(token_ids.as_numpy())
        missing = [n for n, tensor in own.items() if tensor is None]
        if missing:
            raise InvalidText(f"missing encoder input {', '.join(missing)}")
        return {n: tensor.as_numpy() for n, tensor in own.items()}

    def _batch_feeds(self, batch: TokenizedBatch) -> dict[str, np.ndarray]:
        return {name: getattr(batch, name) for name in self._runner.input_names}

    @staticmethod
    def _given_outputs(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The token outputs of a request that sent the encoder's own inputs: what it sent, its mask's counts."""
        ids, mask = feeds.get("input_ids"), feeds.get("attention_mask")
        answer: dict[str, np.ndarray] = {}
        if ids is not None:
            answer["INPUT_IDS"] = ids
        if mask is not None:
            counts = (np.asarray(mask) != 0).sum(axis=1, dtype=np.int64).reshape(-1, 1)
            answer |= {"ATTENTION_MASK": mask, "TOKEN_COUNT": counts, "FULL_TOKEN_COUNT": counts}
        return answer
