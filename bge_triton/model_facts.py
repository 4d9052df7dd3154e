"""The one record of what a served model is: dims, pooling, window, prefixes.

`ModelFacts.from_checkpoint` reads them from the checkpoint's own files (the Hugging Face
`config.json`, `tokenizer_config.json` and the sentence-transformers module files). Export writes
the record into the model repository (`model_facts.json` and the ensemble's config.pbtxt
`parameters`); the Triton models, the client and the proxy read it back from there and never
re-derive it.
"""

from __future__ import annotations

import json
import re
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

Pooling = Literal["cls", "mean", "max", "lasttoken"]
POOLING_MODES: tuple[str, ...] = ("cls", "mean", "max", "lasttoken")
# What the export serves: text -> vector ("embed"), or (query, document) -> one relevance logit ("rerank": a
# cross-encoder, `*ForSequenceClassification` with one label; export/rerank_export.py).
TASKS: tuple[str, ...] = ("embed", "rerank")

FACTS_FILE = "model_facts.json"
# FlagEmbedding's BGEM3FlagModel head weights (torch Linear state dicts) in a bge-m3 checkpoint.
SPARSE_LINEAR_FILE = "sparse_linear.pt"
COLBERT_LINEAR_FILE = "colbert_linear.pt"
M3_HEAD_FILES: tuple[str, ...] = (COLBERT_LINEAR_FILE, SPARSE_LINEAR_FILE)

# BGE v1.5 retrieval instructions, as published with the models (FlagEmbedding's model cards).
# They are not stored in the checkpoints' config files, so they are matched on the model id.
_BGE_QUERY_INSTRUCTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"bge-(small|base|large)-zh(-v1\.5)?$", re.I), "为这个句子生成表示以用于检索相关文章："),
    (
        re.compile(r"bge-(small|base|large)-en(-v1\.5)?$", re.I),
        "Represent this sentence for searching relevant passages: ",
    ),
)

# Positions some architectures reserve before the first token (RoBERTa/XLM-R: padding_idx + 1).
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}


class FactsError(ValueError):
    """The checkpoint's files do not describe a servable embedding model."""


@dataclass(frozen=True)
class ModelFacts:
    name: str  # the served name (the Triton ensemble's name)
    source: str  # hub id or local directory it was exported from
    model_type: str  # config.json model_type (bert, xlm-roberta, ...)
    dim: int  # output embedding dimension
    max_tokens: int  # tokens per input, special tokens included; longer inputs are truncated
    pooling: Pooling
    normalize: bool  # L2-normalised output
    query_instruction: str  # prepended to retrieval queries ("" when the model has none)
    passage_instruction: str  # prepended to passages ("" for bge)
    pad_token_id: int
    uses_token_type_ids: bool
    vocab_size: int
    precision: str = "fp32"
    # A digest of the exported files (tokenizer, encoder and pooling: weights, code and configs), written at export
    # (export/fingerprint.py): the export the proxy's vector cache keys vectors by; "" for older exports.
    fingerprint: str = ""
    # bge-m3's layout: `sparse_linear.pt` and `colbert_linear.pt` beside the checkpoint (FlagEmbedding's
    # BGEM3FlagModel heads); export then adds the sparse / ColBERT models and ensembles.
    m3_heads: bool = False
    # What a cosine means for this model: its scores on human-rated STS pairs per language, measured at export
    # (export/score_bands.py), as compact JSON; "" when not measured (older exports).
    score_bands: str = ""
    # The start-up canary (bge_triton/canary.py): probe texts and their PyTorch FP32 vectors, stored at export,
    # re-embedded by the proxy through each Triton replica before it is used; "" for older exports (no check).
    canary: str = ""
    # "embed" or "rerank" (TASKS); a reranker's `dim` is its one score, its pooling and normalize are unused.
    task: str = "embed"

    # -- reading from a checkpoint ---------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: Path, *, name: str, source: str, precision: str = "fp32") -> ModelFacts:
        checkpoint = Path(checkpoint)
        config = _read_json(checkpoint / "config.json")
        if config is None:
            raise FactsError(f"{checkpoint} has no config.json: not a Hugging Face checkpoint")
        model_type = str(config.get("model_type", ""))
        task = _read_task(checkpoint, config)
        dim = 1 if task == "rerank" else int(config["hidden_size"])
        pooling, normalize = ("cls", False) if task == "rerank" else _read_pooling(checkpoint)
        prompts = (_read_json(checkpoint / "config_sentence_transformers.json") or {}).get("prompts") or {}
        query_instruction = str(prompts.get("query") or "") or _known_query_instruction(name, source, config)
        passage_instruction = str(prompts.get("passage") or prompts.get("document") or "")
        return cls(
            name=name,
            source=source,
            model_type=model_type,
            dim=dim,
            max_tokens=_read_max_tokens(checkpoint, config, model_type),
            pooling=pooling,
            normalize=normalize,
            query_instruction=query_instruction,
            passage_instruction=passage_instruction,
            pad_token_id=int(config.get("pad_token_id") or 0),
            uses_token_type_ids=int(config.get("type_vocab_size") or 0) > 1,
            vocab_size=int(config.get("vocab_size") or 0),
            precision=precision,
            m3_heads=task == "embed" and has_m3_heads(checkpoint),
            task=task,
        )

    # -- the repository's copy ---------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ModelFacts:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFacts:
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, field_ in known.items():
            if key not in data:
                if field_.default is not MISSING:
                    continue
                raise FactsError(f"model facts lack {key!r}")
            values[key] = data[key]
        facts = cls(**values)
        return facts._coerced()

    def to_parameters(self) -> dict[str, str]:
        """Triton config.pbtxt `parameters` (string values only)."""
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def from_parameters(cls, parameters: dict[str, str]) -> ModelFacts:
        """Inverse of `to_parameters` (what a client reads from the model config)."""
        return cls.from_dict(dict(parameters))

    def _coerced(self) -> ModelFacts:
        def as_bool(v: Any) -> bool:
            return v if isinstance(v, bool) else str(v).lower() == "true"

        pooling = str(self.pooling)
        if pooling not in POOLING_MODES:
            raise FactsError(f"unknown pooling {pooling!r}")
        return ModelFacts(
            name=str(self.name),
            source=str(self.source),
            model_type=str(self.model_type),
            dim=int(self.dim),
            max_tokens=int(self.max_tokens),
            pooling=pooling,  # type: ignore[arg-type]
            normalize=as_bool(self.normalize),
            query_instruction=str(self.query_instruction),
            passage_instruction=str(self.passage_instruction),
            pad_token_id=int(self.pad_token_id),
            uses_token_type_ids=as_bool(self.uses_token_type_ids),
            vocab_size=int(self.vocab_size),
            precision=str(self.precision),
            fingerprint=str(self.fingerprint),
            m3_heads=as_bool(self.m3_heads),
            score_bands=str(self.score_bands),
            canary=str(self.canary),
            task=_checked_task(str(self.task)),
        )

    def score_bands_dict(self) -> dict[str, Any] | None:
        """`score_bands` parsed; None when the export did not measure them."""
        return json.loads(self.score_bands) if self.score_bands else None


def _checked_task(task: str) -> str:
    if task not in TASKS:
        raise FactsError(f"unknown task {task!r} ({', '.join(TASKS)})")
    return task


def _read_task(checkpoint: Path, config: dict[str, Any]) -> str:
    """"rerank" for a cross-encoder (`*ForSequenceClassification` with one label), "embed" otherwise."""
    architectures = [str(a) for a in config.get("architectures") or []]
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return "embed"
    labels = int(config.get("num_labels") or len(config.get("id2label") or {}) or 2)
    if labels != 1:
        raise FactsError(
            f"{checkpoint} is a sequence classifier with {labels} labels ({', '.join(architectures)}): only "
            "one-label cross-encoders (rerankers: one relevance logit per query-document pair) are served"
        )
    return "rerank"


def has_m3_heads(checkpoint: Path) -> bool:
    """bge-m3's layout: both FlagEmbedding head files (`M3_HEAD_FILES`) beside the transformer checkpoint."""
    return all((Path(checkpoint) / name).is_file() for name in M3_HEAD_FILES)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _read_pooling(checkpoint: Path) -> tuple[Pooling, bool]:
    """Pooling mode and normalisation from the sentence-transformers modules; CLS+normalize otherwise."""
    modules = _read_json_list(checkpoint / "modules.json")
    if not modules:
        # A bare transformers checkpoint: BGE's convention (CLS, normalised).
        return "cls", True
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    pooling_dirs = [m.get("path", "") for m in modules if str(m.get("type", "")).endswith("Pooling")]
    if not pooling_dirs:
        raise FactsError(f"{checkpoint}/modules.json has no Pooling module")
    pool_cfg = _read_json(checkpoint / pooling_dirs[0] / "config.json")
    if pool_cfg is None:
        raise FactsError(f"{checkpoint}/{pooling_dirs[0]}/config.json is missing")
    return _pooling_mode(pool_cfg), normalize


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else []


def _pooling_mode(cfg: dict[str, Any]) -> Pooling:
    # sentence-transformers >= 6 writes {"pooling_mode": "cls"}; older versions one flag per mode.
    mode = cfg.get("pooling_mode")
    if isinstance(mode, str):
        aliases = {"cls": "cls", "mean": "mean", "max": "max", "lasttoken": "lasttoken", "last_token": "lasttoken"}
        if mode in aliases:
            return aliases[mode]  # type: ignore[return-value]
        raise FactsError(f"unsupported pooling_mode {mode!r}")
    flags = {
        "pooling_mode_cls_token": "cls",
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_lasttoken": "lasttoken",
    }
    chosen = [mode_ for key, mode_ in flags.items() if cfg.get(key)]
    unsupported = [k for k in ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens") if cfg.get(k)]
    if unsupported or len(chosen) != 1:
        raise FactsError(f"unsupported pooling configuration {cfg}")
    return chosen[0]  # type: ignore[return-value]


def _read_max_tokens(checkpoint: Path, config: dict[str, Any], model_type: str) -> int:
    positions = int(config.get("max_position_embeddings") or 512) - _POSITION_OFFSET.get(model_type, 0)
    candidates = [positions]
    st_cfg = _read_json(checkpoint / "sentence_bert_config.json") or {}
    if st_cfg.get("max_seq_length"):
        candidates.append(int(st_cfg["max_seq_length"]))
    tok_cfg = _read_json(checkpoint / "tokenizer_config.json") or {}
    model_max = tok_cfg.get("model_max_length")
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:  # HF writes 1e30 for "unset"
        candidates.append(model_max)
    return min(candidates)


def _known_query_instruction(name: str, source: str, config: dict[str, Any]) -> str:
    ids = [name, source.rstrip("/"), str(config.get("_name_or_path", "")).rstrip("/")]
    for ident in ids:
        base = ident.rsplit("/", 1)[-1]
        for pattern, instruction in _BGE_QUERY_INSTRUCTIONS:
            if pattern.search(base):
                return instruction
    return ""


def read_facts(model_dir: Path) -> ModelFacts:
    """Facts of an exported model from its ensemble folder in a model repository."""
    path = Path(model_dir) / FACTS_FILE
    if not path.is_file():
        raise FactsError(f"{path} is missing: export the model with `bge-triton export` first")
    return ModelFacts.from_json(path.read_text(encoding="utf-8"))
