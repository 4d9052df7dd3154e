"""Triton Python-backend model: text (or token ids) -> ids, attention mask, token type ids, counts.

Export copies this file unchanged to `<name>-tokenizer/1/model.py`; it needs only numpy and the
`tokenizers` package, so it runs in the NGC tritonserver image as well as in the local launcher.
`TextTokenizer` is the tokenizer itself, importable without Triton (the export parity check uses it).

Inputs  (exactly one per request; the `<name>` ensemble sends TEXT, `<name>-ids` sends TOKEN_IDS)
        TEXT             BYTES  [batch, 1]   UTF-8 text
        TOKEN_IDS        INT64  [batch, n]   the text's token ids, right-padded with -1; the model's
                                             special tokens are added unless already there
Outputs INPUT_IDS        INT64  [batch, seq] padded to the request's longest input, rounded up (to a multiple
                                             of `pad_to_multiple_of`, or to the next of `pad_buckets`)
        ATTENTION_MASK   INT64  [batch, seq]
        TOKEN_TYPE_IDS   INT64  [batch, seq]
        TOKEN_COUNT      INT64  [batch, 1]   tokens the encoder sees (after truncation)
        FULL_TOKEN_COUNT INT64  [batch, 1]   tokens of the whole input (before truncation)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class InvalidText(ValueError):
    """A request carries something that is not UTF-8 text or valid token ids."""


ID_PADDING = -1  # right padding of TOKEN_IDS rows (never a valid id)
# A text longer than this many characters per token of the window is tokenized from a clipped prefix (see
# `TextTokenizer._clipped_rows`), so a 5 MB string costs what a window-sized text costs.
CLIP_CHARS_PER_TOKEN = 16
# With pad buckets, consecutive requests of one execution share the widest bucket of their run when that pads no
# request to more than SHARE_RATIO times its own bucket, or the run is at most SHARE_WIDTH wide: they then reach
# the encoder as consecutive requests of one shape, which the dynamic batcher merges (see `shared_widths`).
SHARE_RATIO = 2
SHARE_WIDTH = 64


@dataclass
class TokenizedBatch:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    token_count: np.ndarray  # [batch] int64
    full_token_count: np.ndarray  # [batch] int64


@dataclass
class _Row:
    ids: list[int]
    type_ids: list[int]
    full_count: int  # tokens of the whole text; for a clipped text, of its clipped prefix (a lower bound)


class TextTokenizer:
    """A `tokenizers` fast tokenizer with truncation to the model's window and no fixed padding."""

    def __init__(
        self,
        tokenizer_json: str | Path,
        max_tokens: int,
        pad_token_id: int,
        pad_to_multiple_of: int = 8,
        pad_buckets: tuple[int, ...] = (),
    ):
        # One tokenizer (a large vocabulary's takes ~290 MB: multilingual-e5's 250k pieces), which counts the whole
        # text and, with truncation switched on for the call (`_truncated`), truncates it. A packaged
        # tokenizer.json may carry fixed padding/truncation: both are reset here.
        self._full = Tokenizer.from_file(str(tokenizer_json))
        self._full.no_truncation()
        self._full.no_padding()
        self._truncation = threading.Lock()  # the switch is the tokenizer's state: one caller at a time
        self.max_tokens = max_tokens
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = max(1, pad_to_multiple_of)
        # Fixed widths (16, 32, ... up to the window): requests of similar lengths get the same shape, which is
        # what Triton's dynamic batcher needs to merge them for the onnxruntime backend (no ragged batching).
        self.pad_buckets = tuple(sorted(b for b in pad_buckets if b > 0))
        self.vocab_size = self._full.get_vocab_size(with_added_tokens=True)
        self.clip_chars = max_tokens * CLIP_CHARS_PER_TOKEN
        self.prefix, self.suffix = self._special_tokens()

    @classmethod
    def from_params(cls, version_dir: Path, params: dict[str, str]) -> TextTokenizer:
        """The tokenizer a model config's parameters describe (`export/model_configs.py`, `tokenizer_params`), its
        `tokenizer_file` in the model's version folder."""
        return cls(
            version_dir / params.get("tokenizer_file", "tokenizer.json"),
            max_tokens=int(params["max_tokens"]),
            pad_token_id=int(params.get("pad_token_id", "0")),
            pad_to_multiple_of=int(params.get("pad_to_multiple_of", "8")),
            pad_buckets=tuple(int(b) for b in params.get("pad_buckets", "").split(",") if b.strip()),
        )

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the post-processor puts before and after a single text ([CLS] / [SEP], <s> / </s>)."""
        plain = self._full.encode("x", add_special_tokens=False).ids
        full = self._full.encode("x").ids
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
        return [], []

    def _encode_whole(self, texts: list[str]) -> list:
        with self._truncation:
            return self._full.encode_batch(texts)

    def _truncated(self, texts: list[str]) -> list:
        """`texts` truncated to the window, as `Tokenizer.enable_truncation(max_length=...)` truncates."""
        with self._truncation:
            self._full.enable_truncation(max_length=self.max_tokens)
            try:
                return self._full.encode_batch(texts)
            finally:
                self._full.no_truncation()

    def encode(self, texts: list[str]) -> TokenizedBatch:
        return self.encode_groups([texts])[0]

    def encode_groups(self, groups: list[list[str]]) -> list[TokenizedBatch]:
        """Tokenize several requests' texts in one parallel call; pad each group on its own (with pad buckets,
        to the width `shared_widths` gives it)."""
        flat = [t for group in groups for t in group]
        clipped = self._clipped_rows(flat)
        rest = [i for i in range(len(flat)) if i not in clipped]
        encodings = self._encode_whole([flat[i] for i in rest]) if rest else []
        rows: list[_Row] = [_Row([], [], 0)] * len(flat)
        for i, row in clipped.items():
            rows[i] = row
        for i, e in zip(rest, encodings, strict=True):
            rows[i] = _Row(e.ids, e.type_ids, len(e.ids))
        too_long = [i for i in rest if rows[i].full_count > self.max_tokens]
        if too_long:
            truncated = self._truncated([flat[i] for i in too_long])
            for i, enc in zip(too_long, truncated, strict=True):
                rows[i] = _Row(enc.ids, enc.type_ids, rows[i].full_count)
        per_group: list[list[_Row]] = []
        start = 0
        for group in groups:
            per_group.append(rows[start : start + len(group)])
            start += len(group)
        longest = [max((len(row.ids) for row in group), default=1) for group in per_group]
        return [self._pad(group, width) for group, width in zip(per_group, self.shared_widths(longest), strict=True)]

    def shared_widths(self, longest: list[int]) -> list[int]:
        """Each request's padded width, given its longest row, in request order.

        Without buckets every request keeps its own width. With buckets, runs of consecutive requests share the
        widest bucket of the run while no member's own bucket is under 1/SHARE_RATIO of it (or the run stays within
        SHARE_WIDTH): Triton's dynamic batcher merges only consecutive requests of one shape when inputs are not
        ragged (the onnxruntime backend), and the ensemble hands this execution's answers to the encoder in order.
        """
        own = [self.padded_width(n) for n in longest]
        if not self.pad_buckets:
            return own
        widths: list[int] = []
        run_start = 0
        for i, width in enumerate(own):
            run = own[run_start:i]
            if run:
                wider, narrower = max(*run, width), min(*run, width)
                if wider > SHARE_WIDTH and wider > SHARE_RATIO * narrower:
                    widths += [max(run)] * len(run)
                    run_start = i
        widths += [max(own[run_start:])] * (len(own) - run_start) if own else []
        return widths

    def _clipped_rows(self, texts: list[str]) -> dict[int, _Row]:
        """Truncated rows of the texts over `clip_chars` characters, tokenized from prefixes instead of whole.

        A prefix of `clip_chars` characters that already holds more tokens than the window gives the same
        truncated ids as the whole text unless the clip cut through what the first window of tokens comes from
        (one enormous word, say); so the truncated ids of two prefixes, `clip_chars` and twice that, must agree.
        Where they do not, or the prefix does not fill the window (mostly white space or deleted characters), the
        text is tokenized whole, as before. The full token count of a clipped text is its prefix's count: a lower
        bound that is still over the window, which is all `truncate=false` needs to refuse it.
        """
        long = [i for i, text in enumerate(texts) if len(text) > self.clip_chars]
        if not long:
            return {}
        short_clips = [texts[i][: self.clip_chars] for i in long]
        long_clips = [texts[i][: 2 * self.clip_chars] for i in long]
        counts = [len(e.ids) for e in self._encode_whole(short_clips)]
        short, longer = self._truncated(short_clips), self._truncated(long_clips)
        return {
            i: _Row(a.ids, a.type_ids, count)
            for i, count, a, b in zip(long, counts, short, longer, strict=True)
            if count > self.max_tokens and a.ids == b.ids
        }

    def encode_ids(self, ids: np.ndarray) -> TokenizedBatch:
        """Rows of token ids (right-padded with -1) -> a batch, special tokens added where missing."""
        rows = []
        for r, raw in enumerate(np.asarray(ids, dtype=np.int64).reshape(len(ids), -1)):
            n = int((raw != ID_PADDING).sum())
            if (raw[:n] == ID_PADDING).any():
                raise InvalidText(f"TOKEN_IDS[{r}] has -1 padding before its last id")
            valid = raw[:n]
            bad = valid[(valid < 0) | (valid >= self.vocab_size)]
            if len(bad):
                raise InvalidText(
                    f"TOKEN_IDS[{r}] holds id {int(bad[0])}, outside the vocabulary [0, {self.vocab_size})"
                )
            rows.append(self._with_special_tokens(valid.tolist()))
        return self._pad(rows)

    def _with_special_tokens(self, ids: list[int]) -> _Row:
        pre, suf = self.prefix, self.suffix
        if len(ids) >= len(pre) + len(suf) and ids[: len(pre)] == pre and (not suf or ids[-len(suf) :] == suf):
            body = ids[len(pre) : len(ids) - len(suf)]
        else:
            body = ids
        full_count = len(pre) + len(body) + len(suf)
        body = body[: max(0, self.max_tokens - len(pre) - len(suf))]
        merged = pre + body + suf
        return _Row(merged, [0] * len(merged), full_count)

    def _pad(self, rows: list[_Row], width: int | None = None) -> TokenizedBatch:
        counts = np.array([len(row.ids) for row in rows], dtype=np.int64)
        longest = int(counts.max()) if len(counts) else 1
        width = max(width or 0, self.padded_width(longest))
        ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        types = np.zeros((len(rows), width), dtype=np.int64)
        for r, row in enumerate(rows):
            n = len(row.ids)
            ids[r, :n] = row.ids
            mask[r, :n] = 1
            types[r, :n] = row.type_ids
        full = np.array([row.full_count for row in rows], dtype=np.int64)
        return TokenizedBatch(ids, mask, types, counts, full)

    def padded_width(self, longest: int) -> int:
        """The width a request whose longest row has `longest` tokens is padded to."""
        bucket = next((b for b in self.pad_buckets if b >= longest), None)
        if bucket is not None:
            return bucket
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return min(max(width, 1), max(self.max_tokens, longest))


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
        self._tokenizer = TextTokenizer.from_params(version_dir, params)

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses: list = [None] * len(requests)
        text_requests: list[tuple[int, list[str]]] = []
        for r, request in enumerate(requests):
            try:
                text = pb.get_input_tensor_by_name(request, "TEXT")
                token_ids = pb.get_input_tensor_by_name(request, "TOKEN_IDS")
                if (text is None) == (token_ids is None):
                    raise InvalidText("send exactly one of TEXT and TOKEN_IDS")
                if text is not None:
                    text_requests.append((r, decode_texts(text.as_numpy())))
                else:
                    responses[r] = self._response(self._tokenizer.encode_ids(token_ids.as_numpy()))
            except InvalidText as exc:
                responses[r] = pb.InferenceResponse(error=self._invalid(f"invalid input: {exc}"))
        try:
            batches = self._tokenizer.encode_groups([texts for _, texts in text_requests])
        except Exception as exc:  # a tokenizer failure is these requests' error, not the server's
            for r, _ in text_requests:
                responses[r] = pb.InferenceResponse(error=pb.TritonError(f"tokenization failed: {exc}"))
            return responses
        for (r, _), batch in zip(text_requests, batches, strict=True):
            # Each request is padded to its own longest text; the encoder re-pads across requests.
            responses[r] = self._response(batch)
        return responses

    def _invalid(self, message: str):  # -> pb_utils.TritonError with code INVALID_ARG (gRPC 3, HTTP 400)
        pb = self._pb
        code = getattr(pb.TritonError, "INVALID_ARG", None)
        return pb.TritonError(message) if code is None else pb.TritonError(message, code)

    def _response(self, batch: TokenizedBatch):  # -> pb_utils.InferenceResponse
        pb = self._pb
        return pb.InferenceResponse(
            output_tensors=[
                pb.Tensor("INPUT_IDS", batch.input_ids),
                pb.Tensor("ATTENTION_MASK", batch.attention_mask),
                pb.Tensor("TOKEN_TYPE_IDS", batch.token_type_ids),
                pb.Tensor("TOKEN_COUNT", batch.token_count.reshape(-1, 1)),
                pb.Tensor("FULL_TOKEN_COUNT", batch.full_token_count.reshape(-1, 1)),
            ]
        )
