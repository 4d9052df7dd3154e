"""Triton Python-backend model: text -> token ids, attention mask, token type ids, token counts.

Export copies this file unchanged to `<name>-tokenizer/1/model.py`; it needs only numpy and the
`tokenizers` package, so it runs in the NGC tritonserver image as well as in the local launcher.
`TextTokenizer` is the tokenizer itself, importable without Triton (the export parity check uses it).

Inputs  TEXT             BYTES  [batch, 1]   UTF-8 text
Outputs INPUT_IDS        INT64  [batch, seq] padded to the request's longest text, rounded up
        ATTENTION_MASK   INT64  [batch, seq]
        TOKEN_TYPE_IDS   INT64  [batch, seq]
        TOKEN_COUNT      INT64  [batch, 1]   tokens the encoder sees (after truncation)
        FULL_TOKEN_COUNT INT64  [batch, 1]   tokens of the whole text (before truncation)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class InvalidText(ValueError):
    """A request carries something that is not UTF-8 text."""


@dataclass
class TokenizedBatch:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    token_count: np.ndarray  # [batch] int64
    full_token_count: np.ndarray  # [batch] int64


class TextTokenizer:
    """A `tokenizers` fast tokenizer with truncation to the model's window and no fixed padding."""

    def __init__(self, tokenizer_json: str | Path, max_tokens: int, pad_token_id: int, pad_to_multiple_of: int = 8):
        # Two instances of the same tokenizer: one counts the whole text, one truncates it. A
        # packaged tokenizer.json may carry fixed padding/truncation: both are reset here.
        self._full = Tokenizer.from_file(str(tokenizer_json))
        self._full.no_truncation()
        self._full.no_padding()
        self._truncating = Tokenizer.from_file(str(tokenizer_json))
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_length=max_tokens)
        self.max_tokens = max_tokens
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)

    def encode(self, texts: list[str]) -> TokenizedBatch:
        return self.encode_groups([texts])[0]

    def encode_groups(self, groups: list[list[str]]) -> list[TokenizedBatch]:
        """Tokenize several requests' texts in one parallel call; pad each group on its own."""
        flat = [t for group in groups for t in group]
        encodings = self._full.encode_batch(flat) if flat else []
        full_counts = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        too_long = [i for i, n in enumerate(full_counts) if n > self.max_tokens]
        if too_long:
            for i, enc in zip(too_long, self._truncating.encode_batch([flat[i] for i in too_long]), strict=True):
                encodings[i] = enc
        out: list[TokenizedBatch] = []
        start = 0
        for group in groups:
            end = start + len(group)
            out.append(self._pad(encodings[start:end], full_counts[start:end]))
            start = end
        return out

    def _pad(self, encodings: list, full_counts: np.ndarray) -> TokenizedBatch:
        counts = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        longest = int(counts.max()) if len(counts) else 1
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        width = min(max(width, 1), max(self.max_tokens, longest))
        ids = np.full((len(encodings), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        return TokenizedBatch(ids, mask, types, counts, full_counts.copy())


def decode_texts(raw: np.ndarray) -> list[str]:
    """BYTES tensor of shape [batch, 1] (or [batch]) -> list of str; InvalidText on anything else."""
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    elif raw.ndim != 1:
        raise InvalidText(f"TEXT must have shape [batch, 1], got {list(raw.shape)}")
    texts: list[str] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            value = item
        elif isinstance(item, bytes | np.bytes_):
            try:
                value = bytes(item).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidText(f"TEXT[{i}] is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        else:
            raise InvalidText(f"TEXT[{i}] is not a string")
        texts.append(value)
    return texts


class TritonPythonModel:
    """Tokenizes every request of a batch with one `encode_batch` call, answers each on its own."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self._tokenizer = TextTokenizer(
            version_dir / params.get("tokenizer_file", "tokenizer.json"),
            max_tokens=int(params["max_tokens"]),
            pad_token_id=int(params.get("pad_token_id", "0")),
            pad_to_multiple_of=int(params.get("pad_to_multiple_of", "8")),
        )

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses: list = [None] * len(requests)
        texts_per_request: list[tuple[int, list[str]]] = []
        for r, request in enumerate(requests):
            try:
                tensor = pb.get_input_tensor_by_name(request, "TEXT")
                if tensor is None:
                    raise InvalidText("missing input TEXT")
                texts_per_request.append((r, decode_texts(tensor.as_numpy())))
            except InvalidText as exc:
                responses[r] = pb.InferenceResponse(error=pb.TritonError(f"invalid input: {exc}"))
        try:
            batches = self._tokenizer.encode_groups([texts for _, texts in texts_per_request])
        except Exception as exc:  # a tokenizer failure is these requests' error, not the server's
            for r, _ in texts_per_request:
                responses[r] = pb.InferenceResponse(error=pb.TritonError(f"tokenization failed: {exc}"))
            return responses
        for (r, _), batch in zip(texts_per_request, batches, strict=True):
            # Each request is padded to its own longest text; the encoder re-pads across requests.
            responses[r] = pb.InferenceResponse(
                output_tensors=[
                    pb.Tensor("INPUT_IDS", batch.input_ids),
                    pb.Tensor("ATTENTION_MASK", batch.attention_mask),
                    pb.Tensor("TOKEN_TYPE_IDS", batch.token_type_ids),
                    pb.Tensor("TOKEN_COUNT", batch.token_count.reshape(-1, 1)),
                    pb.Tensor("FULL_TOKEN_COUNT", batch.full_token_count.reshape(-1, 1)),
                ]
            )
        return responses
