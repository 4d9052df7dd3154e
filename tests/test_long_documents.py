"""Inputs over the model's window through a real proxy + tritonserver serving all-MiniLM-L6-v2 (256 tokens):
`truncate` END / START / NONE / CHUNK (NVIDIA NIM's names), `return_chunks`, `--max-chunks`; the chunked vector
compared with the same computation in-process (transformers' tokenizer and model)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
import torch
from conftest import BGE, BGE_INSTRUCTION

from bge_triton.client import EmbeddingClient, InvalidInput, embed_long
from bge_triton.client.chunking import (
    CLOSERS,
    PARAGRAPH,
    SENTENCE,
    SENTENCE_ENDS,
    Chunk,
    boundary_levels,
    plan_chunks,
    pool,
)
from bge_triton.client.long_texts import MARGIN, split_tokens
from bge_triton.client.triton_client import TokenizedText
from bge_triton.evaluation.datasets import default_data_dir
from bge_triton.export.parity import TorchReference, cosine_rows
from bge_triton.launcher import TritonOptions, free_port

if TYPE_CHECKING:
    from conftest import Service

MODEL = "all-MiniLM-L6-v2"
WINDOW = 256
MAX_CHUNKS = 40


def chinese_document(chars: int) -> str:
    """Sentences of the shipped Chinese STS set, four to a paragraph, until `chars` characters."""
    lines = (default_data_dir() / "zh-stsb-test.tsv").read_text(encoding="utf-8").splitlines()
    sentences = [s.strip() for line in lines for s in line.split("\t")[:2] if len(s.strip()) > 8]
    out: list[str] = []
    size = 0
    for i, sentence in enumerate(sentences):
        sentence = sentence if sentence[-1] in SENTENCE_ENDS else sentence + "。"
        out.append(sentence + ("\n\n" if i % 4 == 3 else ""))
        size += len(out[-1])
        if size >= chars:
            break
    return "".join(out)[:chars]


DOCUMENT = chinese_document(5000)


@pytest.fixture(scope="module")
def proxy(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(
        ["serve-proxy", "--triton-url", triton.http_url, "--port", str(port), "--max-chunks", str(MAX_CHUNKS)],
        port=port, ready_path="/ready",
    )  # fmt: skip


def _post(proxy: Service, **body: Any) -> httpx.Response:
    return httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, **body}, timeout=120)


def _vectors(answer: dict[str, Any]) -> np.ndarray:
    return np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)


@torch.inference_mode()
def _reference_rows(reference: TorchReference, rows: list[list[int]]) -> np.ndarray:
    """Token-id rows (special tokens included) through the checkpoint in-process, one at a time (no padding)."""
    out = []
    for row in rows:
        ids = torch.tensor([row])
        mask = torch.ones_like(ids)
        hidden = reference.model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        out.append(reference.pooler(hidden.last_hidden_state, mask).numpy()[0])
    return np.asarray(out, dtype=np.float32)


def test_chunked_5000_character_chinese_document_equals_the_in_process_computation(
    proxy: Service, reference: TorchReference
) -> None:
    assert len(DOCUMENT) == 5000
    response = _post(proxy, input=DOCUMENT, truncate="CHUNK", return_chunks=True)
    assert response.status_code == 200, response.text
    answer = response.json()
    (item,) = answer["data"]
    # in-process: the checkpoint's tokenizer, the same plan, the checkpoint's model, the token-weighted mean
    encoding = reference.tokenizer(DOCUMENT, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
    assert len(ids) > 10 * WINDOW  # far over the window
    cls, sep = reference.tokenizer.cls_token_id, reference.tokenizer.sep_token_id
    plan = plan_chunks(DOCUMENT, offsets, WINDOW - 2 - MARGIN)
    rows = [[cls, *ids[c.first : c.stop], sep] for c in plan]
    chunk_vectors = _reference_rows(reference, rows)
    expected = pool(chunk_vectors, [c.tokens for c in plan])

    chunks = item["chunks"]
    assert [(c["start"], c["stop"], c["tokens"]) for c in chunks] == [(c.start, c.end, c.tokens) for c in plan]
    served_chunks = np.array([c["embedding"] for c in chunks], dtype=np.float32)
    assert cosine_rows(served_chunks, chunk_vectors).min() >= 0.9999
    vector = np.asarray(item["embedding"], dtype=np.float32)
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert float(vector @ expected) >= 0.9999
    assert float(np.abs(vector - expected).max()) < 2e-3
    # usage: every token the encoder saw, the special tokens and the overlaps included
    assert answer["usage"]["prompt_tokens"] == sum(len(r) for r in rows)
    # the windows cover the document, and cut where sentences or paragraphs end
    assert chunks[0]["start"] == 0 and chunks[-1]["stop"] == len(DOCUMENT.rstrip())
    assert all(a["stop"] <= b["start"] for a, b in itertools.pairwise(chunks))
    for chunk in chunks[:-1]:
        before = DOCUMENT[: chunk["stop"]].rstrip("".join(CLOSERS))
        assert before[-1] in SENTENCE_ENDS or DOCUMENT[chunk["stop"] : chunk["stop"] + 1] == "\n", chunk
    # END (the default) embeds the first 254 tokens only: another vector
    end = _vectors(_post(proxy, input=DOCUMENT).json())[0]
    assert float(end @ _reference_rows(reference, [[cls, *ids[: WINDOW - 2], sep]])[0]) >= 0.9999
    assert float(end @ vector) < 0.99


def test_start_keeps_the_end_of_the_text(proxy: Service, reference: TorchReference) -> None:
    pets = ["the", "cat", "sat", "on", "a", "mat", "and", "looked", "at", "dog", "while", "it", "slept"]
    money = ["stock", "prices", "fell", "as", "the", "bank", "raised", "interest", "rates", "again", "today"]
    text = (
        " ".join(f"{pets[i % 13]} {pets[(i * 5) % 13]}." for i in range(120))
        + " "
        + " ".join(f"{money[i % 11]} {money[(i * 3) % 11]}." for i in range(120))
    )
    encoding = reference.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert len(encoding["input_ids"]) > 2 * WINDOW
    kept = WINDOW - 2 - MARGIN  # the window less [CLS], [SEP] and the margin for re-tokenization
    tail = text[encoding["offset_mapping"][-kept][0] :]  # the text of the last 252 tokens
    start = _post(proxy, input=[text, "short"], truncate="START")
    assert start.status_code == 200, start.text
    vectors = _vectors(start.json())
    tail_vector = _vectors(_post(proxy, input=tail).json())[0]
    assert float(vectors[0] @ tail_vector) >= 0.9999
    assert cosine_rows(vectors[:1], reference.embed([tail])).min() >= 0.9999
    head_vector = _vectors(_post(proxy, input=text, truncate="END").json())[0]
    assert float(head_vector @ vectors[0]) < 0.99  # not the start
    assert start.json()["usage"]["prompt_tokens"] == kept + 2 + reference.token_counts(["short"])[0]
    # a text within the window is the same in every mode
    short = [_vectors(_post(proxy, input="short", truncate=mode).json())[0] for mode in ("END", "START", "CHUNK")]
    assert np.abs(short[0] - short[1]).max() < 1e-6 and np.abs(short[0] - short[2]).max() < 1e-6
    # lower case and the boolean are accepted: true = END
    same = _vectors(_post(proxy, input=text, truncate="start").json())[0]
    assert float(same @ vectors[0]) >= 0.99999
    assert float(_vectors(_post(proxy, input=text, truncate=True).json())[0] @ head_vector) >= 0.99999


@pytest.mark.parametrize("truncate", ["NONE", "none", False])
def test_none_over_the_window_is_a_400(proxy: Service, truncate: object) -> None:
    response = _post(proxy, input=["fine", DOCUMENT[:600]], truncate=truncate)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert _post(proxy, input="fine", truncate=truncate).status_code == 200


def test_limits_and_bad_combinations_are_400s(proxy: Service) -> None:
    too_long = chinese_document(MAX_CHUNKS * WINDOW + 2000)
    response = _post(proxy, input=["short", too_long], truncate="CHUNK")
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("too_many_chunks", "input")
    assert f"at most {MAX_CHUNKS}" in error["message"] and "input 1 " in error["message"]
    response = _post(proxy, input="text", return_chunks=True)
    assert response.status_code == 400 and response.json()["error"]["code"] == "return_chunks_without_chunk"
    response = _post(proxy, input="text", truncate="MIDDLE")
    assert response.status_code == 400 and response.json()["error"]["param"] == "truncate"


def test_return_chunks_with_dimensions_and_int8(proxy: Service) -> None:
    body = {"input": DOCUMENT[:1500], "truncate": "CHUNK", "return_chunks": True, "dimensions": 64}
    floats = _post(proxy, **body).json()["data"][0]
    ints = _post(proxy, **body, embedding_type="int8").json()["data"][0]
    assert len(floats["chunks"]) == len(ints["chunks"]) > 1
    for f, q in zip(floats["chunks"], ints["chunks"], strict=True):
        assert len(f["embedding"]) == len(q["embedding"]) == 64
        assert abs(float(np.linalg.norm(f["embedding"])) - 1) < 1e-5
        expected = np.clip(np.floor((np.asarray(f["embedding"], np.float32) + 1) / np.float32(2 / 255)), 0, 255) - 128
        assert np.array_equal(np.asarray(q["embedding"]), expected)


def test_client_library_embeds_long_texts_as_the_proxy_does(proxy: Service, triton: TritonOptions) -> None:
    document = DOCUMENT[:1800]
    served = _post(proxy, input=[document, "短句"], truncate="CHUNK", return_chunks=True).json()
    served_start = _vectors(_post(proxy, input=document, truncate="START").json())[0]
    with EmbeddingClient(triton.grpc_url, model=MODEL) as client:
        chunked = embed_long(client, [document, "短句"], truncation="chunk")
        start = embed_long(client, document, truncation="start")
        with pytest.raises(InvalidInput, match="at most 2 per input"):
            embed_long(client, document, truncation="chunk", max_chunks=2)
    assert chunked.chunks is not None and start.chunks is None
    assert cosine_rows(chunked.result.vectors, _vectors(served)).min() >= 0.9999
    spans = [[(c["start"], c["stop"]) for c in item["chunks"]] for item in served["data"]]
    assert [c.spans for c in chunked.chunks] == spans and len(spans[0]) > 2 and spans[1] == [(0, 2)]
    assert int(chunked.result.token_counts.sum()) == served["usage"]["prompt_tokens"]
    assert float(start.result.vectors[0] @ served_start) >= 0.9999
    assert start.result.token_counts.tolist() == [WINDOW - MARGIN] and start.result.full_token_counts[0] > 3 * WINDOW


def test_start_and_chunk_keep_the_query_instruction(
    two_model_triton: TritonOptions, spawn: Callable[..., Service], bge_reference: TorchReference
) -> None:
    """bge-zh's query instruction stays in front of the tail (START) and of every window (CHUNK)."""
    port = free_port()
    bge = spawn(["serve-proxy", "--triton-url", two_model_triton.http_url, "--port", str(port)], port=port)
    window = bge_reference.facts.max_tokens
    text = DOCUMENT[: 3 * window]
    instruction = len(bge_reference.tokenizer(BGE_INSTRUCTION, add_special_tokens=False)["input_ids"])
    offsets = bge_reference.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    tail = text[offsets[-(window - 2 - instruction - MARGIN)][0] :]

    def post(**body: Any) -> np.ndarray:
        body = {"model": BGE, "input_type": "query", **body}
        response = httpx.post(f"{bge.url}/v1/embeddings", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return _vectors(response.json())

    start = post(input=text, truncate="START")[0]
    assert float(start @ post(input=tail)[0]) >= 0.9999
    assert float(start @ bge_reference.embed([BGE_INSTRUCTION + tail])[0]) >= 0.999
    chunked = httpx.post(
        f"{bge.url}/v1/embeddings", json={"model": BGE, "input_type": "query", "input": text, "truncate": "CHUNK",
                                          "return_chunks": True}, timeout=120,
    ).json()["data"][0]  # fmt: skip
    pieces = [text[c["start"] : c["stop"]] for c in chunked["chunks"]]
    assert len(pieces) >= 3
    expected = bge_reference.embed([BGE_INSTRUCTION + piece for piece in pieces])
    assert cosine_rows(np.array([c["embedding"] for c in chunked["chunks"]], dtype=np.float32), expected).min() >= 0.999


# -- the pieces, without a server ------------------------------------------------------------------------------------
def test_plan_prefers_paragraphs_then_sentences_then_overlapping_windows() -> None:
    text = "一二三四五。六七八九十\n\n甲乙丙丁戊己庚辛壬癸子丑寅卯辰"
    offsets = [(i, i + 1) for i, c in enumerate(text) if not c.isspace()]
    levels = boundary_levels(text, offsets)
    assert levels[5] == SENTENCE and levels[10] == PARAGRAPH and levels[4] == levels[11] == 0
    chunks = plan_chunks(text, offsets, 12)
    assert text[chunks[0].start : chunks[0].end] == "一二三四五。六七八九十"  # the paragraph, not the sentence
    rest = chunks[1:]  # no boundary: windows of 12 with an overlap of 12 // 8 = 1 token
    assert [c.tokens for c in rest] == [12, 4] and rest[1].first == rest[0].stop - 1
    assert plan_chunks("short", [(0, 5)], 12) == [Chunk(0, 1, 0, 5)]


def test_instruction_tokens_are_kept_apart_from_the_text() -> None:
    instruction, text = "query: ", "hello world"
    tokenized = TokenizedText(
        instruction + text, np.array([10, 11, 12, 13]), np.array([[0, 5], [5, 6], [7, 12], [13, 18]]),
        np.zeros(4, dtype=bool), ["query", ":", "hello", "world"],
    )  # fmt: skip
    split = split_tokens(tokenized, text)
    assert split.instruction == 2 and split.offsets == [(0, 5), (6, 11)] and text[6:11] == "world"
    # sentencepiece: "passage: 一架" -> "▁passage", ":", "▁一" (the space and the text's first character), "架"
    instruction, text = "passage: ", "一架"
    tokenized = TokenizedText(
        instruction + text, np.array([1, 2, 3, 4]), np.array([[0, 7], [7, 8], [8, 10], [10, 11]]),
        np.zeros(4, dtype=bool), ["▁passage", ":", "▁一", "架"],
    )  # fmt: skip
    split = split_tokens(tokenized, text)
    assert split.instruction == 2 and split.offsets == [(0, 1), (1, 2)]
