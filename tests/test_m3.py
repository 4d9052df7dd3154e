"""bge-m3 (issue 8): the M3 checkpoint layout, the export of its sparse and ColBERT heads, the Triton contract
(`NAME-m3`, `NAME-sparse`, `NAME-colbert`) against FlagEmbedding's own `BGEM3FlagModel`, 8192-token inputs,
the ONNX runner's token-budget sub-batching and ONNX external data.

A tiny random-init XLM-R with bge-m3's config scaled down (the `m3_checkpoint` fixture) stands in for the real
weights; FlagEmbedding loads the very same directory offline and is the reference.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton import cli
from bge_triton.export.exporter import ExportResult, export_model
from bge_triton.export.model_configs import M3HeadFiles
from bge_triton.export.onnx_export import export_module
from bge_triton.export.parity import M3OnnxPipeline, cosine_rows
from bge_triton.export.repository import write_repository
from bge_triton.launcher import TritonOptions, TritonServer, free_port
from bge_triton.model_facts import ModelFacts
from bge_triton.model_names import m3_model_names, model_names
from bge_triton.triton_models.m3_heads import colbert_rows, sparse_rows
from bge_triton.triton_models.onnx_runner import PaddedOnnxRunner, plan_sub_batches

MODEL = "bge-m3-tiny"
DIM = 64
TEXTS = [
    "今天天气很好，我们去公园散步吧。",
    "The quick brown fox jumps over the lazy dog.",
    "用 Triton 部署 BGE-M3 模型：dense、sparse 和 ColBERT 三种向量 in one pass.",
    "北京 is the capital of China, 上海是最大的城市。",
    # ~3000 tokens of mixed Chinese and English
    " ".join(f"第{i}段：向量检索 improves retrieval quality for passage {i}, 混合语言 text." for i in range(150)),
]
M3_OUTPUTS = ("EMBEDDING", "SPARSE_IDS", "SPARSE_WEIGHTS", "COLBERT", "COLBERT_LENGTH", "TOKEN_COUNT")


def _parse(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def _infer(client: grpcclient.InferenceServerClient, model: str, texts: list[str]) -> dict[str, np.ndarray]:
    data = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    inp = grpcclient.InferInput("TEXT", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    result = client.infer(model, [inp])
    return {out.name: result.as_numpy(out.name) for out in result.get_response().outputs}


def _sparse_dicts(out: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """SPARSE_IDS/SPARSE_WEIGHTS rows -> FlagEmbedding's lexical_weights shape ({str(token id): weight})."""
    return [
        {str(i): float(w) for i, w in zip(ids, weights, strict=True) if i != -1}
        for ids, weights in zip(out["SPARSE_IDS"], out["SPARSE_WEIGHTS"], strict=True)
    ]


def _colbert_list(out: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [np.array(row[:n]) for row, n in zip(out["COLBERT"], out["COLBERT_LENGTH"].ravel().tolist(), strict=True)]


@pytest.fixture(scope="module")
def client(m3_triton: TritonOptions) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(m3_triton.grpc_url)


@pytest.fixture(scope="module")
def flag_model(m3_checkpoint: Path):  # -> FlagEmbedding.BGEM3FlagModel
    from FlagEmbedding import BGEM3FlagModel

    return BGEM3FlagModel(str(m3_checkpoint), use_fp16=False, devices="cpu")


@pytest.fixture(scope="module")
def served(client: grpcclient.InferenceServerClient) -> dict[str, np.ndarray]:
    return _infer(client, f"{MODEL}-m3", TEXTS)


# -- the checkpoint and its facts --------------------------------------------------------------------------------
def test_m3_checkpoint_layout_tokenizer_and_facts(m3_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    names = {p.name for p in m3_checkpoint.iterdir()}
    assert {"model.safetensors", "colbert_linear.pt", "sparse_linear.pt", "tokenizer.json", "config.json"} <= names
    assert {"tokenizer_config.json", "modules.json", "sentence_bert_config.json", "1_Pooling"} <= names
    config = json.loads((m3_checkpoint / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (2, 64, 4)
    assert (config["intermediate_size"], config["vocab_size"], config["max_position_embeddings"]) == (128, 250002, 8194)
    colbert = torch.load(m3_checkpoint / "colbert_linear.pt", weights_only=True)
    sparse = torch.load(m3_checkpoint / "sparse_linear.pt", weights_only=True)
    assert colbert["weight"].shape == (DIM, DIM) and sparse["weight"].shape == (1, DIM)

    tokenizer = AutoTokenizer.from_pretrained(str(m3_checkpoint))  # offline, from the directory
    assert tokenizer.model_max_length == 8192
    special = [tokenizer.cls_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id]
    assert special == [0, 1, 2, 3]

    facts = ModelFacts.from_checkpoint(m3_checkpoint, name=MODEL, source=str(m3_checkpoint))
    assert (facts.dim, facts.max_tokens, facts.pooling, facts.normalize) == (64, 8192, "cls", True)
    assert facts.m3_heads
    assert ModelFacts.from_parameters(facts.to_parameters()) == facts
    assert facts.to_parameters()["m3_heads"] == "true"
    old = {k: v for k, v in json.loads(facts.to_json()).items() if k != "m3_heads"}  # facts written before m3_heads
    assert ModelFacts.from_dict(old).m3_heads is False


def test_make_bench_model_m3_cli(tmp_path: Path) -> None:
    out = tmp_path / "m3"
    assert cli.main(["make-bench-model", "--m3", "--num-layers", "1", "--hidden-size", "32", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (1, 32, 2)
    assert ModelFacts.from_checkpoint(out, name="m", source="m").m3_heads


# -- export: models, parity, configs -------------------------------------------------------------------------------
def test_export_adds_the_m3_models_and_records_head_parity(m3_export: ExportResult) -> None:
    repo = m3_export.ensemble_dir.parent
    expected = {*model_names(MODEL).values(), *m3_model_names(MODEL).values()}
    assert {p.parent.name for p in repo.glob("*/config.pbtxt")} == expected
    report = json.loads((repo / f"{MODEL}-encoder/parity.json").read_text())
    assert report["passed"] and report["min_cosine"] >= 0.9999
    m3 = report["m3"]
    assert m3["passed"] and m3["threshold"] == 1e-4 and m3["sparse_ids"] > 0
    assert m3["sparse_max_abs_diff"] <= 1e-4 and m3["colbert_score_max_diff"] <= 1e-4
    assert m3["colbert_length_mismatches"] == 0
    post = _parse(repo / f"{MODEL}-sparse-post/config.pbtxt")
    assert json.loads(post.parameters["unused_token_ids"].string_value) == [0, 2, 1, 3]  # CLS, EOS, PAD, UNK


def _io(config: mc.ModelConfig) -> tuple[list[tuple[str, int, list[int]]], list[tuple[str, int, list[int]]]]:
    return (
        [(i.name, i.data_type, list(i.dims)) for i in config.input],
        [(o.name, o.data_type, list(o.dims)) for o in config.output],
    )


def test_ensemble_contract(m3_export: ExportResult) -> None:
    repo = m3_export.ensemble_dir.parent
    text = [("TEXT", mc.TYPE_STRING, [1])]
    sparse = [("SPARSE_IDS", mc.TYPE_INT64, [-1]), ("SPARSE_WEIGHTS", mc.TYPE_FP32, [-1])]
    colbert = [("COLBERT", mc.TYPE_FP32, [-1, DIM]), ("COLBERT_LENGTH", mc.TYPE_INT64, [1])]
    counts = [("TOKEN_COUNT", mc.TYPE_INT64, [1]), ("FULL_TOKEN_COUNT", mc.TYPE_INT64, [1])]
    dense = [("EMBEDDING", mc.TYPE_FP32, [DIM])]
    for name, outputs in [
        (f"{MODEL}-sparse", sparse + counts),
        (f"{MODEL}-colbert", colbert + counts),
        (f"{MODEL}-m3", dense + sparse + colbert + counts),
        (MODEL, dense + counts),
    ]:
        config = _parse(repo / name / "config.pbtxt")
        assert config.platform == "ensemble" and config.max_batch_size > 0
        assert _io(config) == (text, outputs), name
        assert ModelFacts.from_parameters({k: v.string_value for k, v in config.parameters.items()}) == m3_export.facts
    # dense callers pay nothing for the heads; the M3 ensembles share one tokenizer and encoder pass
    steps = {
        name: [s.model_name for s in _parse(repo / name / "config.pbtxt").ensemble_scheduling.step]
        for name in (MODEL, f"{MODEL}-m3", f"{MODEL}-sparse", f"{MODEL}-colbert")
    }
    # the local target's encoder tokenizes and pools (issue 19): no tokenizer or pooling step, the encoder's
    # `embedding` is EMBEDDING and its ids and mask feed the heads
    assert steps[MODEL] == [f"{MODEL}-encoder"]
    assert steps[f"{MODEL}-sparse"] == [f"{MODEL}-encoder", f"{MODEL}-sparse-head", f"{MODEL}-sparse-post"]
    assert steps[f"{MODEL}-m3"].count(f"{MODEL}-encoder") == 1 and len(steps[f"{MODEL}-m3"]) == 5
    counts = {"TOKEN_COUNT": "TOKEN_COUNT", "FULL_TOKEN_COUNT": "FULL_TOKEN_COUNT"}
    encoder_maps = {
        name: dict(_parse(repo / name / "config.pbtxt").ensemble_scheduling.step[0].output_map)
        for name in (f"{MODEL}-m3", f"{MODEL}-sparse", f"{MODEL}-colbert")
    }
    hidden = {"last_hidden_state": "last_hidden_state"}
    assert encoder_maps[f"{MODEL}-m3"] == hidden | {"embedding": "EMBEDDING", "INPUT_IDS": "input_ids",
                                                    "ATTENTION_MASK": "attention_mask"} | counts  # fmt: skip
    assert encoder_maps[f"{MODEL}-sparse"] == hidden | {"INPUT_IDS": "input_ids"} | counts
    assert encoder_maps[f"{MODEL}-colbert"] == hidden | {"ATTENTION_MASK": "attention_mask"} | counts
    assert not any("colbert" in m for m in steps[f"{MODEL}-sparse"])


def _head_files(repo: Path) -> M3HeadFiles:
    post = _parse(repo / f"{MODEL}-sparse-post/config.pbtxt")
    return M3HeadFiles(
        sparse_onnx=repo / f"{MODEL}-sparse-head/1/model.onnx",
        colbert_onnx=repo / f"{MODEL}-colbert-head/1/model.onnx",
        colbert_dim=DIM,
        unused_token_ids=tuple(json.loads(post.parameters["unused_token_ids"].string_value)),
    )


def test_container_gpu_target_configs(m3_export: ExportResult, tmp_path: Path) -> None:
    repo, facts = m3_export.ensemble_dir.parent, m3_export.facts
    write_repository(
        tmp_path,
        facts,
        tokenizer_json=repo / f"{MODEL}-tokenizer/1/tokenizer.json",
        encoder_onnx=repo / f"{MODEL}-encoder/1/model.onnx",
        pooling_onnx=repo / f"{MODEL}-pooling/1/model.onnx",
        input_names=["input_ids", "attention_mask"],
        target="container-gpu",
        m3_heads=_head_files(repo),
    )
    for head in ("sparse-head", "colbert-head"):
        gpu, local = _parse(tmp_path / f"{MODEL}-{head}/config.pbtxt"), _parse(repo / f"{MODEL}-{head}/config.pbtxt")
        assert gpu.platform == "onnxruntime_onnx" and gpu.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
        assert not (tmp_path / f"{MODEL}-{head}/1/model.py").exists()
        assert local.backend == "python" and all(i.allow_ragged_batch for i in local.input)
        assert _io(gpu) == _io(local)
    for same in ("sparse-post", "colbert-post", "m3", "sparse", "colbert"):
        gpu, local = _parse(tmp_path / f"{MODEL}-{same}/config.pbtxt"), _parse(repo / f"{MODEL}-{same}/config.pbtxt")
        # the GPU target's token budget: 65536 tokens // the 8192-token window = 8 rows per execution
        assert (local.max_batch_size, gpu.max_batch_size) == (64, 65536 // facts.max_tokens) == (64, 8)
        if local.HasField("dynamic_batching"):  # the ensembles have none
            assert list(gpu.dynamic_batching.preferred_batch_size) == [8]  # 16 and 32 are over the cap
            gpu.dynamic_batching.preferred_batch_size[:] = local.dynamic_batching.preferred_batch_size
        gpu.max_batch_size = local.max_batch_size
        if same in ("m3", "sparse", "colbert"):  # on local the encoder tokenizes and pools (issue 19)
            steps = [s.model_name for s in gpu.ensemble_scheduling.step]
            local_steps = [s.model_name for s in local.ensemble_scheduling.step]
            folded = (f"{MODEL}-tokenizer", f"{MODEL}-pooling")
            assert steps[0] == f"{MODEL}-tokenizer" and [m for m in steps if m not in folded] == local_steps
            gpu.ClearField("ensemble_scheduling")
            local.ClearField("ensemble_scheduling")
        for config in (gpu, local):  # the export's digest of the folders differs with the targets' configs
            if "fingerprint" in config.parameters:
                del config.parameters["fingerprint"]
        assert gpu == local


# -- the served outputs against FlagEmbedding -------------------------------------------------------------------------
def test_served_m3_equals_flagembedding(flag_model, served: dict[str, np.ndarray]) -> None:
    ref = flag_model.encode(
        TEXTS, batch_size=4, max_length=8192, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )
    counts = served["TOKEN_COUNT"].ravel().tolist()
    assert counts == [len(flag_model.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert 2500 <= counts[-1] <= 4000  # the long text is really long

    assert served["EMBEDDING"].shape == (len(TEXTS), DIM)
    assert cosine_rows(served["EMBEDDING"], ref["dense_vecs"]).min() >= 0.9999

    lexical = _sparse_dicts(served)
    for mine, theirs in zip(lexical, ref["lexical_weights"], strict=True):
        assert set(mine) == set(theirs)
        assert max((abs(mine[k] - float(theirs[k])) for k in theirs), default=0.0) <= 1e-4
    assert sum(len(d) for d in lexical) > 10
    for i in range(len(TEXTS)):
        for j in range(len(TEXTS)):
            want = flag_model.compute_lexical_matching_score(ref["lexical_weights"][i], ref["lexical_weights"][j])
            assert abs(flag_model.compute_lexical_matching_score(lexical[i], lexical[j]) - want) <= 1e-4

    colbert = _colbert_list(served)
    assert [len(v) for v in colbert] == [len(v) for v in ref["colbert_vecs"]] == [n - 1 for n in counts]
    for i in range(len(TEXTS)):
        for j in range(len(TEXTS)):
            want = float(flag_model.colbert_score(ref["colbert_vecs"][i], ref["colbert_vecs"][j]))
            assert abs(float(flag_model.colbert_score(colbert[i], colbert[j])) - want) <= 1e-4
    padded = served["COLBERT"]
    assert padded.shape == (len(TEXTS), max(counts) - 1, DIM)
    assert not padded[0, counts[0] - 1 :].any()  # right-padded with zero vectors


def test_sparse_and_colbert_ensembles_equal_m3_and_dense_is_unchanged(
    client: grpcclient.InferenceServerClient, served: dict[str, np.ndarray]
) -> None:
    sparse = _infer(client, f"{MODEL}-sparse", TEXTS)
    assert set(sparse) == {"SPARSE_IDS", "SPARSE_WEIGHTS", "TOKEN_COUNT", "FULL_TOKEN_COUNT"}
    np.testing.assert_array_equal(sparse["SPARSE_IDS"], served["SPARSE_IDS"])
    np.testing.assert_allclose(sparse["SPARSE_WEIGHTS"], served["SPARSE_WEIGHTS"], atol=1e-6)
    colbert = _infer(client, f"{MODEL}-colbert", TEXTS)
    assert set(colbert) == {"COLBERT", "COLBERT_LENGTH", "TOKEN_COUNT", "FULL_TOKEN_COUNT"}
    np.testing.assert_array_equal(colbert["COLBERT_LENGTH"], served["COLBERT_LENGTH"])
    np.testing.assert_allclose(colbert["COLBERT"], served["COLBERT"], atol=1e-6)
    dense = _infer(client, MODEL, TEXTS)
    assert set(dense) == {"EMBEDDING", "TOKEN_COUNT", "FULL_TOKEN_COUNT"}
    np.testing.assert_allclose(dense["EMBEDDING"], served["EMBEDDING"], atol=1e-6)
    assert set(M3_OUTPUTS) <= set(served)
    ids, weights = served["SPARSE_IDS"], served["SPARSE_WEIGHTS"]
    assert ids.dtype == np.int64 and weights.dtype == np.float32 and (weights[ids == -1] == 0).all()


def test_concurrent_requests_of_mixed_lengths_match_the_batched_call(
    client: grpcclient.InferenceServerClient, served: dict[str, np.ndarray]
) -> None:
    """Single-text requests sent at once: the dynamic batcher merges them (ragged), the runner sub-batches rows."""
    texts = TEXTS * 4
    with cf.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda text: _infer(client, f"{MODEL}-m3", [text]), texts))
    expected_sparse, expected_colbert = _sparse_dicts(served), _colbert_list(served)
    for k, out in enumerate(outs):
        i = k % len(TEXTS)
        assert cosine_rows(out["EMBEDDING"], served["EMBEDDING"][i : i + 1]).min() >= 0.99999
        [sparse] = _sparse_dicts(out)
        assert sparse.keys() == expected_sparse[i].keys()
        assert max((abs(sparse[t] - expected_sparse[i][t]) for t in sparse), default=0.0) <= 1e-5
        [colbert] = _colbert_list(out)
        np.testing.assert_allclose(colbert, expected_colbert[i], atol=1e-5)


def test_input_over_8192_tokens_is_truncated(client: grpcclient.InferenceServerClient) -> None:
    out = _infer(client, f"{MODEL}-colbert", ["向量检索 embedding " * 3000, "short"])
    assert out["TOKEN_COUNT"].ravel().tolist() == [8192, 3]
    assert out["FULL_TOKEN_COUNT"].ravel()[0] > 8192
    assert out["COLBERT_LENGTH"].ravel().tolist() == [8191, 2]
    assert out["COLBERT"].shape == (2, 8191, DIM)


# -- the post-processing steps on their own ---------------------------------------------------------------------------
def test_sparse_and_colbert_post_processing_follow_flagembedding() -> None:
    ids = np.array([[0, 7, 9, 7, 3, 5, 2, 1], [0, 4, 2, 1, 1, 1, 1, 1]])
    weights = np.array([[0.9, 0.2, 0.0, 0.5, 0.8, 0.3, 0.7, 0.6], [0.4, 0.0, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1]])
    out_ids, out_weights = sparse_rows(ids, weights, (0, 2, 1, 3))
    # max per id, specials (CLS 0, EOS 2, PAD 1, UNK 3) and zero weights dropped, first-occurrence order
    assert out_ids.tolist() == [[7, 5], [-1, -1]]
    np.testing.assert_allclose(out_weights, [[0.5, 0.3], [0.0, 0.0]])
    vectors = np.arange(2 * 8 * 3, dtype=np.float32).reshape(2, 8, 3)
    mask = np.array([[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]])
    padded, lengths = colbert_rows(vectors, mask)
    assert lengths.tolist() == [7, 2] and padded.shape == (2, 7, 3)
    np.testing.assert_array_equal(padded[1, :2], vectors[1, 1:3])
    assert not padded[1, 2:].any()


# -- the runner's token budget ----------------------------------------------------------------------------------------
class _TinyTokenModel(torch.nn.Module):
    """Embedding + one masked self-attention: outputs per token and a masked mean, like encoder + pooling."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(100, 8)
        self.project = torch.nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(input_ids)
        scores = (x @ x.transpose(1, 2)).masked_fill(attention_mask[:, None, :] == 0, -1e9)
        tokens = self.project(torch.softmax(scores, dim=-1) @ x)
        mask = attention_mask.unsqueeze(-1).float()
        return tokens, (tokens * mask).sum(1) / mask.sum(1)


def test_plan_sub_batches_keeps_the_token_budget() -> None:
    lengths = [5, 100, 7, 30, 6, 400]
    groups = plan_sub_batches(lengths, 128)
    assert groups == [[5], [1], [3, 2, 4, 0]]  # 400 alone (over budget), 100 alone, then 4 x 30 <= 128
    assert all(len(g) * max(lengths[i] for i in g) <= 128 or len(g) == 1 for g in groups)
    assert plan_sub_batches(lengths, 0) == [[5, 1, 3, 2, 4, 0]]
    # within the budget, a short row still never pads to more than twice its length (past 64 tokens)
    assert plan_sub_batches([5603, 8, 8], 16384) == [[0], [1, 2]]
    assert plan_sub_batches([200, 120, 90, 60, 3], 16384) == [[0, 1], [2, 3], [4]]


def test_runner_sub_batches_under_the_token_budget_and_matches_one_padded_call(tmp_path: Path) -> None:
    graph = tmp_path / "tiny.onnx"
    export_module(
        _TinyTokenModel().eval(),
        (torch.ones(2, 6, dtype=torch.int64), torch.ones(2, 6, dtype=torch.int64)),
        graph,
        ["input_ids", "attention_mask"],
        ["tokens", "pooled"],
        {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
         "tokens": {0: "batch", 1: "sequence"}, "pooled": {0: "batch"}},
    )  # fmt: skip
    rng = np.random.default_rng(0)

    def request(lengths: list[int]) -> dict[str, np.ndarray]:
        width = -(-max(lengths) // 8) * 8  # padded like the tokenizer model: the request's longest, rounded to 8
        ids, mask = np.ones((len(lengths), width), dtype=np.int64), np.zeros((len(lengths), width), dtype=np.int64)
        for r, n in enumerate(lengths):
            ids[r, :n], mask[r, :n] = rng.integers(2, 100, n), 1
        return {"input_ids": ids, "attention_mask": mask}

    requests = [request([5, 300, 9]), request([12]), request([3, 7, 64, 20])]
    budgeted = PaddedOnnxRunner(graph, pad_values={"input_ids": 1}, max_batch_tokens=128)
    answers = budgeted.run(requests)
    # longest first: 300 alone (over the budget), 64 with 20 (2 x 64 <= 128), the five rows of <= 12 tokens together
    assert budgeted.last_sub_batches == [(1, 300), (2, 64), (5, 12)]
    assert all(rows * length <= 128 or rows == 1 for rows, length in budgeted.last_sub_batches)

    # the reference: every row padded to the batch's longest, one onnxruntime call
    longest = max(r["input_ids"].shape[1] for r in requests)
    merged = {
        name: np.concatenate([np.pad(r[name], [(0, 0), (0, longest - r[name].shape[1])], constant_values=pad)
                              for r in requests])
        for name, pad in (("input_ids", 1), ("attention_mask", 0))
    }  # fmt: skip
    tokens, pooled = budgeted.session.run(["tokens", "pooled"], merged)
    start = 0
    for req, answer in zip(requests, answers, strict=True):
        n, width = req["input_ids"].shape
        assert answer["tokens"].shape == (n, width, 8) and answer["pooled"].shape == (n, 8)
        real = req["attention_mask"].astype(bool)
        np.testing.assert_allclose(answer["pooled"], pooled[start : start + n], atol=1e-5)
        np.testing.assert_allclose(answer["tokens"][real], tokens[start : start + n, :width][real], atol=1e-5)
        assert not answer["tokens"][~real].any()  # past a row's real length: zeros
        start += n
    one_call = PaddedOnnxRunner(graph, pad_values={"input_ids": 1}, max_batch_tokens=0)
    for a, b in zip(one_call.run(requests), answers, strict=True):
        np.testing.assert_allclose(a["pooled"], b["pooled"], atol=1e-5)
    assert one_call.last_sub_batches == [(8, 300)]


# -- ONNX external data (bge-m3's fp32 encoder is over protobuf's 2 GiB) ---------------------------------------------
def test_external_data_export_loads_in_the_runner_and_in_triton(
    m3_checkpoint: Path, m3_export: ExportResult, tmp_path: Path
) -> None:
    result = export_model(str(m3_checkpoint), tmp_path / "repo", name="ext", external_data_threshold=0)
    version = tmp_path / "repo/ext-encoder/1"
    # pooling.onnx and the tokenizer: the local encoder tokenizes and pools (issue 19); the pooling graph is too
    # small for external data
    assert sorted(p.name for p in version.iterdir()) == [
        "model.onnx", "model.onnx.data", "model.py", "onnx_runner.py", "pooling.onnx", "tokenizer.json", "tokenizer.py",
    ]  # fmt: skip
    assert (version / "model.onnx").stat().st_size < 1_000_000 < (version / "model.onnx.data").stat().st_size
    graph = onnx.load(str(version / "model.onnx"), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert result.parity.passed and result.parity.m3 is not None and result.parity.m3.passed

    repo = m3_export.ensemble_dir.parent

    def pipeline(root: Path, name: str) -> M3OnnxPipeline:
        return M3OnnxPipeline(
            root / f"{name}-tokenizer/1/tokenizer.json",
            root / f"{name}-encoder/1/model.onnx",
            root / f"{name}-pooling/1/model.onnx",
            _head_files(repo),
            m3_export.facts,
        )

    external, inline = pipeline(tmp_path / "repo", "ext").encode(TEXTS[:2]), pipeline(repo, MODEL).encode(TEXTS[:2])
    np.testing.assert_allclose(external.dense, inline.dense, atol=1e-6)

    options = TritonOptions(
        repository=tmp_path / "repo", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    with TritonServer(options, log_file=tmp_path / "tritonserver.log"):
        out = _infer(grpcclient.InferenceServerClient(options.grpc_url), "ext-m3", TEXTS[:2])
    assert cosine_rows(out["EMBEDDING"], inline.dense).min() >= 0.9999
    assert [len(v) for v in _colbert_list(out)] == [len(v) for v in inline.colbert]
