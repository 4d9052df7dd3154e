"""Runs the evaluation tasks against an `Embedder`: progress bar, results table, JSON report.

Data files are loaded (and checked) before the service is contacted. Texts are deduplicated,
sorted by length (so each request pads little) and sent in batches of `batch_size`, at most
`concurrency` requests in flight; the progress bar counts texts. Every metric is reported x100:
STS as Spearman x100 of cosine vs gold score, retrieval as MRR@10, Recall@1 and Recall@10 x100.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from bge_triton.client.concurrent_calls import gather_or_cancel

from .datasets import DEFAULT_TASKS, DatasetError, EvalSet, RetrievalSet, StsSet, load_task
from .embedders import Embedder, EvalServiceError, InputType, ModelInfo
from .metrics import cosine_rows, retrieval_metrics, spearman

StsInputType = Literal["auto", "query", "passage"]
STS_INPUT_TYPES: tuple[str, ...] = ("auto", "query", "passage")


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how hard to push the service."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    data_dir: Path | None = None  # None: $BGE_TRITON_DATA, else the sets shipped in the package
    batch_size: int = 64
    concurrency: int = 4
    limit: int | None = None  # first N pairs / queries of each task
    sts_input_type: StsInputType = "auto"
    json_path: Path | None = None
    progress: bool | None = None  # None: when stderr is a terminal
    chunk_size: int = 256  # queries per score-matrix chunk in retrieval

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")
        if self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be at least 1")
        if self.sts_input_type not in STS_INPUT_TYPES:
            raise ValueError(f"--sts-input-type must be one of {', '.join(STS_INPUT_TYPES)}")
        if not self.tasks:
            raise ValueError("no tasks to run")


@dataclass
class TaskResult:
    """One task's metrics (x100), sizes, the input types its texts were embedded as, and its time."""

    task: str
    kind: str
    file: str
    metrics: dict[str, float]
    counts: dict[str, int]
    input_types: dict[str, str]
    seconds: float


@dataclass
class EvalReport:
    """Everything `--json` writes."""

    model: str
    backend: str
    url: str
    protocol: str | None
    sts_input_type: str  # as resolved ("query" or "passage")
    query_instruction: str | None
    passage_instruction: str | None
    batch_size: int
    concurrency: int
    limit: int | None
    tasks: list[TaskResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tasks"] = {t.task: {k: v for k, v in asdict(t).items() if k != "task"} for t in self.tasks}
        out["metric_scale"] = 100
        return out


def resolve_sts_input_type(choice: str, info: ModelInfo) -> InputType:
    """`auto`: `query` when the model has a non-empty passage prefix (e5-style symmetric prefixes:
    STS is then evaluated with `query: ` on both sides), else `passage` (no instruction: bge, MiniLM);
    `passage` too when the service does not say what the passage prefix is."""
    if choice in ("query", "passage"):
        return choice  # type: ignore[return-value]
    return "query" if info.passage_instruction else "passage"


def load_sets(options: EvalOptions) -> list[EvalSet]:
    """Every task's data, in order (DatasetError for a missing or malformed file)."""
    seen: set[str] = set()
    sets = []
    for task in options.tasks:
        if task in seen:
            continue
        seen.add(task)
        sets.append(load_task(task, options.data_dir, limit=options.limit))
    return sets


def _progress(total: int, desc: str, enabled: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="text", disable=None if enabled is None else not enabled, file=sys.stderr)


async def embed_texts(
    embedder: Embedder,
    texts: Sequence[str],
    input_type: InputType,
    *,
    batch_size: int,
    concurrency: int,
    bar: Any = None,
) -> np.ndarray:
    """Embeddings of `texts` in order: length-sorted batches, at most `concurrency` requests in flight."""
    if not texts:
        raise ValueError("no texts to embed")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    semaphore = asyncio.Semaphore(concurrency)

    async def one(indices: list[int]) -> np.ndarray:
        async with semaphore:
            vectors = await embedder.embed([texts[i] for i in indices], input_type)
        if vectors.ndim != 2 or vectors.shape[0] != len(indices):
            raise EvalServiceError(f"the service answered {vectors.shape} embeddings for {len(indices)} texts")
        if bar is not None:
            bar.update(len(indices))
        return vectors

    parts = await gather_or_cancel([one(batch) for batch in batches])
    if len({p.shape[1] for p in parts}) != 1:
        raise EvalServiceError("the service answered embeddings of different dimensions")
    out = np.empty((len(texts), parts[0].shape[1]), dtype=np.float32)
    out[np.asarray(order)] = np.concatenate(parts)
    return out


def _unique(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(distinct texts, index of each input text among them)."""
    index: dict[str, int] = {}
    positions = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.int64)
    return list(index), positions


async def _run_sts(
    embedder: Embedder, data: StsSet, input_type: InputType, options: EvalOptions
) -> tuple[dict[str, float], dict[str, int]]:
    texts, positions = _unique([*data.sentences1, *data.sentences2])
    bar = _progress(len(texts), data.name, options.progress)
    try:
        vectors = await embed_texts(
            embedder, texts, input_type, batch_size=options.batch_size, concurrency=options.concurrency, bar=bar
        )
    finally:
        bar.close()
    n = len(data)
    cosines = cosine_rows(vectors[positions[:n]], vectors[positions[n:]])
    return {"spearman": 100.0 * spearman(cosines, data.scores)}, {"pairs": n, "texts": len(texts)}


async def _run_retrieval(
    embedder: Embedder, data: RetrievalSet, options: EvalOptions
) -> tuple[dict[str, float], dict[str, int]]:
    queries, positions = _unique(data.queries)
    bar = _progress(len(queries) + len(data.corpus), data.name, options.progress)
    kwargs: dict[str, Any] = {"batch_size": options.batch_size, "concurrency": options.concurrency, "bar": bar}
    try:
        query_vectors = await embed_texts(embedder, queries, "query", **kwargs)
        corpus_vectors = await embed_texts(embedder, data.corpus, "passage", **kwargs)
    finally:
        bar.close()
    scores = retrieval_metrics(
        query_vectors[positions], corpus_vectors, data.relevant, chunk_size=options.chunk_size,
        exclude=data.self_matches or None,
    )  # fmt: skip
    metrics = {name: 100.0 * value for name, value in scores.items()}
    counts = {"queries": len(data), "corpus": len(data.corpus), "texts": len(queries) + len(data.corpus)}
    counts["self_matches_excluded"] = sum(1 for s in data.self_matches if s)
    return metrics, counts


async def run_eval(embedder: Embedder, sets: Sequence[EvalSet], options: EvalOptions) -> EvalReport:
    """Connects, evaluates every set and closes the embedder."""
    started = time.perf_counter()
    try:
        info = await embedder.connect()
        sts_type = resolve_sts_input_type(options.sts_input_type, info)
        report = EvalReport(
            model=info.name,
            backend=embedder.backend,
            url=embedder.url,
            protocol=getattr(embedder, "protocol", None),
            sts_input_type=sts_type,
            query_instruction=info.query_instruction,
            passage_instruction=info.passage_instruction,
            batch_size=options.batch_size,
            concurrency=options.concurrency,
            limit=options.limit,
        )
        for data in sets:
            task_started = time.perf_counter()
            if isinstance(data, StsSet):
                metrics, counts = await _run_sts(embedder, data, sts_type, options)
                input_types = {"sentences": sts_type}
            else:
                metrics, counts = await _run_retrieval(embedder, data, options)
                input_types = {"queries": "query", "corpus": "passage"}
            report.tasks.append(
                TaskResult(
                    task=data.name,
                    kind=data.kind,
                    file=str(data.path),
                    metrics={k: round(v, 4) for k, v in metrics.items()},
                    counts=counts,
                    input_types=input_types,
                    seconds=round(time.perf_counter() - task_started, 3),
                )
            )
    finally:
        await embedder.close()
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def format_table(report: EvalReport) -> str:
    """The results as a plain-text table (one row per metric)."""
    via = f"{report.backend} {report.url}" + (f" ({report.protocol})" if report.protocol else "")
    lines = [f"model {report.model} via {via}; STS texts embedded as {report.sts_input_type}"]
    rows = [("task", "metric", "score", "size", "seconds")]
    for task in report.tasks:
        if task.kind == "sts":
            size = f"{task.counts['pairs']} pairs"
        else:
            size = f"{task.counts['queries']} queries / {task.counts['corpus']} docs"
        for i, (name, value) in enumerate(task.metrics.items()):
            first = i == 0
            rows.append(
                (task.task if first else "", name, f"{value:.2f}", size if first else "",
                 f"{task.seconds:.1f}" if first else "")
            )  # fmt: skip
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    for r, row in enumerate(rows):
        cells = [row[c].rjust(widths[c]) if c in (2, 4) else row[c].ljust(widths[c]) for c in range(5)]
        lines.append("  ".join(cells).rstrip())
        if r == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"total {report.seconds:.1f}s; scores x100 (STS: Spearman of cosine vs gold)")
    return "\n".join(lines)


def write_json(report: EvalReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def evaluate(embedder: Embedder, options: EvalOptions) -> EvalReport:
    """Loads the sets, then runs them against the service (synchronously)."""
    sets = load_sets(options)
    return asyncio.run(run_eval(embedder, sets, options))


def run_command(embedder: Embedder, options: EvalOptions, *, out: TextIO | None = None,
                err: TextIO | None = None) -> int:  # fmt: skip
    """`bge-triton eval`: table on stdout, errors as one line on stderr; the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    try:
        report = evaluate(embedder, options)
    except (DatasetError, EvalServiceError) as exc:
        print(f"error: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=err)
        return 130
    print(format_table(report), file=out)
    if options.json_path is not None:
        try:
            write_json(report, options.json_path)
        except OSError as exc:
            print(f"error: cannot write {options.json_path}: {exc}", file=err)
            return 1
        print(f"wrote {options.json_path}", file=out)
    return 0
