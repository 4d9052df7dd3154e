"""Triton Python-backend model `<name>-tokenize`: text -> every token, untruncated, with its offsets.

What `POST /tokenize` and the web page's tokenisation view show. Export copies this file to
`<name>-tokenize/1/model.py` and `tokenizer.py` (the `<name>-tokenizer` model's source, whose text
decoding it reuses) beside it, with the model's `tokenizer.json`; it needs only numpy and `tokenizers`.
`TokenLister` is the tokenizer itself, importable without Triton.

Inputs  TEXT                BYTES  [batch, 1]   UTF-8 text, sent as is (the caller adds any instruction)
        ADD_SPECIAL_TOKENS  BOOL   [batch, 1]   optional, default true: the model's [CLS]/[SEP] (<s>/</s>)
        DECODE_IDS          INT64  [batch, n]   instead of TEXT: token ids to decode (TEI's `/decode`), rows
                                                right-padded with -1; the answer is DECODED only
        SKIP_SPECIAL_TOKENS BOOL   [batch, 1]   optional, default true: leave special tokens out of DECODED
Outputs TOKEN_IDS           INT64  [batch, n]   every token of the text (no truncation), right-padded with -1
        TOKEN_OFFSETS       INT64  [batch, n, 2] [start, stop) character offsets into the text ([0, 0] for
                                                special tokens and padding)
        TOKEN_SPECIAL       BOOL   [batch, n]   whether the token is a special token (padding: false)
        TOKENS              BYTES  [batch, n]   the vocabulary's token strings ("##ing", "▁hello"); padding b""
        TOKEN_COUNT         INT64  [batch, 1]   tokens of the text (may exceed the model's window)
        DECODED             BYTES  [batch, 1]   the text DECODE_IDS decode to (UTF-8)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from tokenizers import Tokenizer

ID_PADDING = -1


def _tokenizer_source() -> ModuleType:
    """`tokenizer.py` from this file's folder: the package's own module, or the copy export puts beside
    `model.py` in the Triton repository (where the package is not installed)."""
    name = "_bge_triton_tokenizer_source"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("tokenizer.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is being made
        spec.loader.exec_module(module)
    return module


_source = _tokenizer_source()
InvalidText = _source.InvalidText
decode_texts = _source.decode_texts


@dataclass
class TokenRows:
    """The tokens of one request's texts, right-padded to its longest text."""

    ids: np.ndarray  # int64 [k, n], -1 padding
    offsets: np.ndarray  # int64 [k, n, 2]
    special: np.ndarray  # bool [k, n]
    tokens: np.ndarray  # object (bytes) [k, n]
    counts: np.ndarray  # int64 [k]


class TokenLister:
    """The whole tokenization of texts (no truncation, no padding), as the `<name>-tokenizer` model's
    tokenizer computes it before it cuts a text to the window."""

    def __init__(self, tokenizer_json: str | Path):
        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def tokenize(self, texts: list[str], *, add_special_tokens: bool = True) -> TokenRows:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens) if texts else []
        counts = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        width = max(1, int(counts.max()) if len(counts) else 1)
        k = len(encodings)
        ids = np.full((k, width), ID_PADDING, dtype=np.int64)
        offsets = np.zeros((k, width, 2), dtype=np.int64)
        special = np.zeros((k, width), dtype=np.bool_)
        tokens = np.full((k, width), b"", dtype=np.object_)
        for r, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[r, :n] = enc.ids
            mask = np.asarray(enc.special_tokens_mask, dtype=np.bool_)
            special[r, :n] = mask
            if n:
                offsets[r, :n] = np.asarray(enc.offsets, dtype=np.int64).reshape(n, 2)
                offsets[r, :n][mask] = 0
            tokens[r, :n] = [t.encode("utf-8") for t in enc.tokens]
        return TokenRows(ids, offsets, special, tokens, counts)

    def decode(self, ids: np.ndarray, *, skip_special_tokens: bool = True) -> list[str]:
        """Rows of token ids (right-padded with -1) -> their text; InvalidText for an id outside the vocabulary."""
        rows = np.asarray(ids, dtype=np.int64).reshape(len(ids), -1)
        vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        texts = []
        for r, raw in enumerate(rows):
            n = int((raw != ID_PADDING).sum())
            row = raw[:n]
            if (row == ID_PADDING).any():
                raise InvalidText(f"DECODE_IDS[{r}] has -1 padding before its last id")
            outside = row[(row < 0) | (row >= vocab)]
            if len(outside):
                raise InvalidText(f"DECODE_IDS[{r}] holds {int(outside[0])}, not an id of the vocabulary [0, {vocab})")
            texts.append(self._tokenizer.decode(row.tolist(), skip_special_tokens=skip_special_tokens))
        return texts


class TritonPythonModel:
    """Answers each request of a dynamic batch on its own (this model is for people and tools, not throughput)."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self._lister = TokenLister(version_dir / params.get("tokenizer_file", "tokenizer.json"))

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses = []
        for request in requests:
            decode = pb.get_input_tensor_by_name(request, "DECODE_IDS")
            if decode is not None:
                responses.append(self._decode(request, decode))
                continue
            try:
                text = pb.get_input_tensor_by_name(request, "TEXT")
                if text is None:
                    raise InvalidText("TEXT is missing")
                texts = decode_texts(text.as_numpy())
                flag = pb.get_input_tensor_by_name(request, "ADD_SPECIAL_TOKENS")
                flags = {True} if flag is None else {bool(v) for v in np.asarray(flag.as_numpy()).reshape(-1)}
                if len(flags) != 1:
                    raise InvalidText("ADD_SPECIAL_TOKENS must be the same for every text of a request")
                rows = self._lister.tokenize(texts, add_special_tokens=flags.pop())
            except InvalidText as exc:
                responses.append(pb.InferenceResponse(error=self._invalid(f"invalid input: {exc}")))
                continue
            except Exception as exc:  # a tokenizer failure is this request's error, not the server's
                responses.append(pb.InferenceResponse(error=pb.TritonError(f"tokenization failed: {exc}")))
                continue
            responses.append(
                pb.InferenceResponse(
                    output_tensors=[
                        pb.Tensor("TOKEN_IDS", rows.ids),
                        pb.Tensor("TOKEN_OFFSETS", rows.offsets),
                        pb.Tensor("TOKEN_SPECIAL", rows.special),
                        pb.Tensor("TOKENS", rows.tokens),
                        pb.Tensor("TOKEN_COUNT", rows.counts.reshape(-1, 1)),
                    ]
                )
            )
        return responses

    def _decode(self, request: object, ids: object):  # -> pb_utils.InferenceResponse with DECODED
        pb = self._pb
        try:
            flag = pb.get_input_tensor_by_name(request, "SKIP_SPECIAL_TOKENS")
            flags = {True} if flag is None else {bool(v) for v in np.asarray(flag.as_numpy()).reshape(-1)}
            if len(flags) != 1:
                raise InvalidText("SKIP_SPECIAL_TOKENS must be the same for every row of a request")
            texts = self._lister.decode(ids.as_numpy(), skip_special_tokens=flags.pop())
        except InvalidText as exc:
            return pb.InferenceResponse(error=self._invalid(f"invalid input: {exc}"))
        except Exception as exc:  # a tokenizer failure is this request's error, not the server's
            return pb.InferenceResponse(error=pb.TritonError(f"decoding failed: {exc}"))
        decoded = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_).reshape(-1, 1)
        return pb.InferenceResponse(output_tensors=[pb.Tensor("DECODED", decoded)])

    def _invalid(self, message: str):  # -> pb_utils.TritonError with code INVALID_ARG (gRPC 3, HTTP 400)
        pb = self._pb
        code = getattr(pb.TritonError, "INVALID_ARG", None)
        return pb.TritonError(message) if code is None else pb.TritonError(message, code)
