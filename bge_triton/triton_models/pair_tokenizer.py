"""Triton Python-backend model `<name>-pair-tokenizer`: (query, document) -> one cross-encoder sequence.

A reranker's first step. Export copies this file to `<name>-pair-tokenizer/1/model.py` and `tokenizer.py` (the
embedding tokenizer, whose padding, pad buckets and text decoding it reuses) beside it, with the model's
`tokenizer.json`; it needs only numpy and `tokenizers`. `PairTokenizer` is importable without Triton (the export's
parity check and the tests use it).

Truncation is FlagEmbedding's `FlagReranker`: the query is cut to 3/4 of the window (its tokens, special tokens
not counted), then the document to what is left of the window (`truncation="only_second"`), so a long document
never pushes the query out. The pair is `<s> query </s></s> document </s>` for XLM-R (the tokenizer's own
post-processor: `[CLS] q [SEP] d [SEP]` with token types 0/1 for BERT).

Inputs  QUERY            BYTES  [batch, 1]   UTF-8 query
        DOCUMENT         BYTES  [batch, 1]   UTF-8 document
Outputs INPUT_IDS        INT64  [batch, seq] padded as the embedding tokenizer pads
        ATTENTION_MASK   INT64  [batch, seq]
        TOKEN_TYPE_IDS   INT64  [batch, seq]
        TOKEN_COUNT      INT64  [batch, 1]   tokens the encoder sees (after truncation)
        FULL_TOKEN_COUNT INT64  [batch, 1]   tokens of the whole pair (before truncation)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType


def _tokenizer_source() -> ModuleType:
    """`tokenizer.py` from this file's folder: the package's module, or the copy export puts beside `model.py`."""
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
TokenizedBatch = _source.TokenizedBatch
QUERY_SHARE = (3, 4)  # FlagReranker's query_max_length: max_length * 3 // 4


class PairTokenizer(_source.TextTokenizer):  # type: ignore[misc,name-defined]
    """(query, document) pairs -> padded encoder inputs, truncating the document first."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.pair_specials = self._full.num_special_tokens_to_add(True)
        self.query_max = self.max_tokens * QUERY_SHARE[0] // QUERY_SHARE[1]

    def encode_pairs(self, queries: list[str], documents: list[str]) -> TokenizedBatch:
        return self.encode_pair_groups([(queries, documents)])[0]

    def encode_pair_groups(self, groups: list[tuple[list[str], list[str]]]) -> list[TokenizedBatch]:
        """Several requests' pairs tokenized in parallel calls; each request padded on its own."""
        queries = [q for qs, _ in groups for q in qs]
        documents = [d for _, ds in groups for d in ds]
        if len(queries) != len(documents):
            raise InvalidText(f"{len(queries)} queries for {len(documents)} documents")
        unique = sorted(set(queries))  # a request repeats its one query for every document
        encoded = dict(zip(unique, self._full.encode_batch(unique, add_special_tokens=False), strict=True))
        doc_encodings = self._documents(documents)
        rows = []
        for query, (document, full_doc) in zip(queries, doc_encodings, strict=True):
            q = encoded[query]
            full_count = len(q.ids) + full_doc + self.pair_specials
            if len(q.ids) > self.query_max:
                q = self._full.encode(query, add_special_tokens=False)  # a fresh copy: truncate() is in place
                q.truncate(self.query_max)
            room = max(0, self.max_tokens - self.pair_specials - len(q.ids))
            if len(document.ids) > room:
                document.truncate(room)
            pair = self._full.post_process(q, document, add_special_tokens=True)
            rows.append(_source._Row(pair.ids, pair.type_ids, full_count))
        per_group, start = [], 0
        for qs, _ in groups:
            per_group.append(rows[start : start + len(qs)])
            start += len(qs)
        longest = [max((len(row.ids) for row in group), default=1) for group in per_group]
        return [self._pad(group, width) for group, width in zip(per_group, self.shared_widths(longest), strict=True)]

    def _documents(self, documents: list[str]) -> list[tuple[object, int]]:
        """(encoding without special tokens, its full token count) per document. A document over `clip_chars`
        characters is tokenized from a prefix of that many characters when the prefix alone overfills the window
        (the truncated tokens are then the same; its count, a lower bound, is still over the window)."""
        clipped = [d[: self.clip_chars] if len(d) > self.clip_chars else d for d in documents]
        encodings = self._full.encode_batch(clipped, add_special_tokens=False)
        out: list[tuple[object, int]] = []
        redo = [i for i, (d, e) in enumerate(zip(documents, encodings, strict=True))
                if len(d) > self.clip_chars and len(e.ids) <= self.max_tokens]  # fmt: skip
        if redo:
            for i, e in zip(redo, self._full.encode_batch([documents[i] for i in redo], add_special_tokens=False),
                            strict=True):  # fmt: skip
                encodings[i] = e
        for e in encodings:
            out.append((e, len(e.ids)))
        return out


class TritonPythonModel:
    """Tokenizes every request's pairs of a batch together, answers each request on its own."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils  # only inside Triton

        self._pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self._tokenizer = PairTokenizer.from_params(version_dir, params)

    def execute(self, requests: list) -> list:
        pb = self._pb
        responses: list = [None] * len(requests)
        pairs: list[tuple[int, tuple[list[str], list[str]]]] = []
        for r, request in enumerate(requests):
            try:
                queries = decode_texts(pb.get_input_tensor_by_name(request, "QUERY").as_numpy())
                documents = decode_texts(pb.get_input_tensor_by_name(request, "DOCUMENT").as_numpy())
                if len(queries) != len(documents):
                    raise InvalidText(f"{len(queries)} QUERY rows for {len(documents)} DOCUMENT rows")
                pairs.append((r, (queries, documents)))
            except InvalidText as exc:
                responses[r] = pb.InferenceResponse(error=self._invalid(f"invalid input: {exc}"))
        try:
            batches = self._tokenizer.encode_pair_groups([group for _, group in pairs])
        except Exception as exc:  # a tokenizer failure is these requests' error, not the server's
            for r, _ in pairs:
                responses[r] = pb.InferenceResponse(error=pb.TritonError(f"tokenization failed: {exc}"))
            return responses
        for (r, _), batch in zip(pairs, batches, strict=True):
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

    def _invalid(self, message: str):  # -> pb_utils.TritonError with code INVALID_ARG (HTTP 400)
        pb = self._pb
        code = getattr(pb.TritonError, "INVALID_ARG", None)
        return pb.TritonError(message) if code is None else pb.TritonError(message, code)
