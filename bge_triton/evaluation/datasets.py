"""The evaluation sets: STS pairs (TSV) and retrieval queries with positives/negatives (JSONL).

A task is named either by a short name of one of the shipped sets (`TASKS`), resolved inside a data
folder (`--data-dir`, else $BGE_TRITON_DATA, else the sets shipped in the package, `bge_triton/data/eval`),
or by a path: `*.tsv` / `*.tsv.gz` is an STS set, `*.jsonl` a retrieval set.

STS files are `sentence1<TAB>sentence2<TAB>score` (an optional header row is skipped), or have a
header naming `sentence1`, `sentence2` and `score` columns, and possibly a `split` column (the STS
benchmark keeps train/dev/test in one file: the short name `sts-en` reads its test split).
Retrieval files hold one `{"query": str, "pos": [str, ...], "neg": [str, ...]}` per line; every
query is searched in the pooled, deduplicated corpus of all positives and negatives of all lines.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bge_triton.package_data import eval_data_dir

DATA_ENV = "BGE_TRITON_DATA"

TaskKind = Literal["sts", "retrieval"]


@dataclass(frozen=True)
class TaskSpec:
    """Where a short task name's data lives inside the data folder."""

    kind: TaskKind
    filename: str
    split: str | None = None
    description: str = ""


TASKS: dict[str, TaskSpec] = {
    "sts-zh": TaskSpec("sts", "zh-stsb-test.tsv", None, "Chinese STS-B test (Spearman of cosine vs gold)"),
    "sts-en": TaskSpec("sts", "en-stsbenchmark.tsv.gz", "test", "English STS benchmark, test split"),
    "retrieval-zh": TaskSpec(
        "retrieval", "zh-retrieval-bge-finetune.jsonl", None, "Chinese queries vs the pooled pos+neg corpus"
    ),
}
DEFAULT_TASKS: tuple[str, ...] = tuple(TASKS)


class DatasetError(Exception):
    """A task's data file is missing or malformed; the message is one line meant for the user."""


@dataclass(frozen=True)
class StsSet:
    """Sentence pairs with gold similarity scores."""

    name: str
    path: Path
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    kind: TaskKind = "sts"

    def __len__(self) -> int:
        return len(self.scores)

    def limited(self, limit: int | None) -> StsSet:
        """The first `limit` pairs (all of them for None)."""
        if limit is None:
            return self
        return StsSet(self.name, self.path, self.sentences1[:limit], self.sentences2[:limit], self.scores[:limit])


@dataclass(frozen=True)
class RetrievalSet:
    """Queries, the pooled corpus, and each query's relevant corpus indices (its positives)."""

    name: str
    path: Path
    queries: list[str]
    corpus: list[str]
    relevant: list[frozenset[int]]
    # Per query, the corpus rows holding the query's own text (not one of its positives). In this STS-derived
    # set 2,117 of 2,701 queries are also another line's positive or negative: left in, the query's own copy
    # takes rank 1. They are left out of that query's ranking, as MTEB does for symmetric sets.
    self_matches: list[frozenset[int]] = field(default_factory=list)
    kind: TaskKind = "retrieval"

    def __len__(self) -> int:
        return len(self.queries)


EvalSet = StsSet | RetrievalSet


def default_data_dir() -> Path:
    """$BGE_TRITON_DATA, else the evaluation sets shipped in the package."""
    explicit = os.environ.get(DATA_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return eval_data_dir()


def resolve_task(task: str, data_dir: Path | None = None) -> tuple[str, TaskKind, Path, str | None]:
    """(display name, kind, file, split) of a short task name or a path; DatasetError when the file is missing."""
    if task in TASKS:
        spec = TASKS[task]
        folder = data_dir if data_dir is not None else default_data_dir()
        path = (folder / spec.filename).resolve()
        if not path.is_file():
            raise DatasetError(
                f"{task}: data file not found: {path} (pass --data-dir or set ${DATA_ENV} to the folder holding "
                f"{spec.filename})"
            )
        return task, spec.kind, path, spec.split
    path = Path(task).expanduser()
    name = path.name
    lowered = name.lower()
    if lowered.endswith((".tsv", ".tsv.gz")):
        kind: TaskKind = "sts"
    elif lowered.endswith((".jsonl", ".jsonl.gz")):
        kind = "retrieval"
    else:
        raise DatasetError(
            f"unknown task {task!r}: use one of {', '.join(TASKS)}, a .tsv STS file or a .jsonl retrieval file"
        )
    if not path.is_file():
        raise DatasetError(f"{name}: data file not found: {path.resolve()}")
    return name, kind, path, None


def load_task(task: str, data_dir: Path | None = None, *, limit: int | None = None) -> EvalSet:
    """The evaluation set of a short task name or a path, cut to its first `limit` pairs / queries."""
    name, kind, path, split = resolve_task(task, data_dir)
    if kind == "sts":
        return load_sts_tsv(path, split=split, name=name, limit=limit)
    return load_retrieval_jsonl(path, name=name, limit=limit)


def _open_text(path: Path) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:
            yield from handle
    except OSError as exc:
        raise DatasetError(f"{path.name}: cannot read {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_sts_tsv(
    path: Path | str, *, split: str | None = None, name: str | None = None, limit: int | None = None
) -> StsSet:
    """STS pairs of a (possibly gzipped) TSV: 3 columns, or a header naming sentence1/sentence2/score.

    `split` keeps only the rows whose `split` column equals it (the file needs one then).
    """
    path = Path(path)
    name = name or path.name
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    columns: tuple[int, int, int] | None = None  # (sentence1, sentence2, score) column indices
    split_col: int | None = None
    for number, raw in enumerate(_open_text(path), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        cells = line.split("\t")
        if columns is None:
            header = [c.strip().lower() for c in cells]
            if {"sentence1", "sentence2", "score"} <= set(header):
                columns = (header.index("sentence1"), header.index("sentence2"), header.index("score"))
                split_col = header.index("split") if "split" in header else None
                if split is not None and split_col is None:
                    raise DatasetError(f"{name}: {path} has no 'split' column to select {split!r} from")
                continue
            if len(cells) != 3:
                raise DatasetError(
                    f"{name}: {path} line {number} has {len(cells)} tab-separated columns; an STS file needs "
                    "sentence1<TAB>sentence2<TAB>score (or a header naming those columns)"
                )
            if split is not None:
                raise DatasetError(f"{name}: {path} has no header with a 'split' column to select {split!r} from")
            columns = (0, 1, 2)
            if not _is_number(cells[2]):
                continue  # a header row with other names
        if len(cells) <= max(columns):
            raise DatasetError(f"{name}: {path} line {number} has {len(cells)} columns, expected {max(columns) + 1}")
        if split is not None and split_col is not None and cells[split_col].strip() != split:
            continue
        a, b, score = cells[columns[0]], cells[columns[1]], cells[columns[2]]
        try:
            value = float(score)
        except ValueError:
            raise DatasetError(f"{name}: {path} line {number}: score {score!r} is not a number") from None
        s1.append(a)
        s2.append(b)
        scores.append(value)
        if limit is not None and len(scores) >= limit:
            break
    if not scores:
        which = f" in split {split!r}" if split is not None else ""
        raise DatasetError(f"{name}: {path} holds no sentence pairs{which}")
    return StsSet(name, path, s1, s2, scores)


def load_retrieval_jsonl(path: Path | str, *, name: str | None = None, limit: int | None = None) -> RetrievalSet:
    """Queries of a JSONL file of `{"query", "pos", "neg"}` lines, against the pooled deduplicated corpus.

    With `limit`, only the first `limit` lines are read, and the corpus is pooled from those lines alone.
    """
    path = Path(path)
    name = name or path.name
    queries: list[str] = []
    relevant: list[frozenset[int]] = []
    corpus_index: dict[str, int] = {}

    def index_of(text: str) -> int:
        if text not in corpus_index:
            corpus_index[text] = len(corpus_index)
        return corpus_index[text]

    for number, raw in enumerate(_open_text(path), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{name}: {path} line {number} is not JSON: {exc.msg}") from None
        query, pos, neg = (record.get(k) if isinstance(record, dict) else None for k in ("query", "pos", "neg"))
        if not isinstance(query, str) or not _str_list(pos) or not _str_list(neg if neg is not None else []):
            raise DatasetError(
                f'{name}: {path} line {number}: expected {{"query": str, "pos": [str, ...], "neg": [str, ...]}}'
            )
        if not pos:
            raise DatasetError(f"{name}: {path} line {number}: query has no positives")
        queries.append(query)
        relevant.append(frozenset(index_of(text) for text in pos))
        for text in neg or []:
            index_of(text)
        if limit is not None and len(queries) >= limit:
            break
    if not queries:
        raise DatasetError(f"{name}: {path} holds no queries")
    self_matches = [
        frozenset({corpus_index[q]}) if q in corpus_index and corpus_index[q] not in wanted else frozenset()
        for q, wanted in zip(queries, relevant, strict=True)
    ]
    return RetrievalSet(name, path, queries, list(corpus_index), relevant, self_matches)


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
