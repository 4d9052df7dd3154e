"""Drive NVIDIA's `perf_analyzer` against the text ensemble over gRPC (or HTTP) and parse its CSV report.

perf_analyzer comes from `bench/install_perf_analyzer.sh` (the binary of the tritonclient 2.46 wheel behind a
wrapper that puts libcudart.so.12 on the library path), or from $BGE_TRITON_PERF_ANALYZER.

Request shape. The ensemble batches (max_batch_size > 0) and its TEXT input has dims [1], so a request is
[n, 1]. perf_analyzer's JSON entries describe *one batch element* (the batch dimension is never written in
the file: an entry of shape [n, 1] is refused as "incompatible with the model's input shape of [1]"), and
`-b n` makes every request out of n consecutive entries. So `write_input_data` writes one entry per text and
returns n, the batch size to pass as `-b`: request k then carries exactly the texts of group k.

Coverage. In synchronous mode perf_analyzer 2.46 starts every worker thread at data step 0 and advances
each by the concurrency, so with concurrency C only groups 0, C, 2C, ... (mod the group count) would ever be
sent. `run_perf_analyzer` therefore hands it a copy of the data with every group repeated C times in a row:
the steps visited then walk through all groups in order, whichever way threads are offset.

Run as a script for a quick look: `python bench/perf_analyzer.py --grpc-url 127.0.0.1:8001 --concurrency 1 4`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_VAR = "BGE_TRITON_PERF_ANALYZER"
INPUT_NAME = "TEXT"
DEFAULT_MODEL = "all-MiniLM-L6-v2"

# CSV columns whose sum is the client's average latency (all in microseconds).
_LATENCY_PARTS = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
)
# Of those, the time Triton's own statistics account for (queue and compute of the models it ran).
_SERVER_PARTS = ("Server Queue", "Server Compute Input", "Server Compute Infer", "Server Compute Output")


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer failed, timed out, or wrote no usable report."""

    def __init__(self, message: str, command: Sequence[str] = (), output: str = ""):
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"{message}\ncommand: {' '.join(command)}" + (f"\noutput (tail):\n{tail}" if tail else ""))
        self.command = list(command)
        self.output = output


class PerfAnalyzerNotFound(PerfAnalyzerError, FileNotFoundError):
    """No perf_analyzer: run bench/install_perf_analyzer.sh or set $BGE_TRITON_PERF_ANALYZER."""


@dataclass(frozen=True)
class PerfResult:
    """One concurrency level as perf_analyzer measured it (its last, stable window set).

    perf_analyzer's "infer/sec" counts batch elements, i.e. texts here (requests/s x batch size).
    """

    model: str
    concurrency: int
    batch_size: int
    infer_per_s: float
    requests_per_s: float
    texts_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    # The part of avg_ms inside Triton's models (queue + compute); the rest is the client, the network and
    # Triton's frontend.
    server_avg_ms: float
    request_count: int | None
    command: list[str] = field(repr=False)
    csv: str = field(repr=False)
    output: str = field(repr=False)

    def summary(self) -> str:
        return (
            f"{self.model} concurrency={self.concurrency} batch={self.batch_size}: "
            f"{self.requests_per_s:.1f} req/s, {self.texts_per_s:.1f} texts/s; latency ms "
            f"avg {self.avg_ms:.1f} p50 {self.p50_ms:.1f} p90 {self.p90_ms:.1f} "
            f"p95 {self.p95_ms:.1f} p99 {self.p99_ms:.1f}"
        )


def default_install_path() -> Path:
    """Where bench/install_perf_analyzer.sh writes its wrapper: beside this venv's python."""
    return Path(sys.executable).parent / "perf_analyzer"


def find_perf_analyzer() -> Path | None:
    """$BGE_TRITON_PERF_ANALYZER if set, else the install script's wrapper; None when not an executable file."""
    explicit = os.environ.get(ENV_VAR)
    candidate = Path(explicit).expanduser() if explicit else default_install_path()
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    return None


def write_input_data(texts_per_request: Sequence[Sequence[str]], path: str | os.PathLike[str]) -> int:
    """Write perf_analyzer's `--input-data` JSON so that request k carries exactly `texts_per_request[k]`.

    Every request must have the same number of texts n (perf_analyzer sends fixed-size batches); the file
    holds one entry per text, `{"TEXT": {"content": [text], "shape": [1]}}`, group after group. Returns n:
    pass it as `batch_size` to `run_perf_analyzer`.
    """
    groups = [list(group) for group in texts_per_request]
    if not groups:
        raise ValueError("texts_per_request is empty")
    sizes = {len(group) for group in groups}
    if len(sizes) != 1:
        raise ValueError(f"every request must carry the same number of texts (perf_analyzer's -b); got {sorted(sizes)}")
    batch_size = sizes.pop()
    if batch_size == 0:
        raise ValueError("requests must carry at least one text")
    for k, group in enumerate(groups):
        for text in group:
            if not isinstance(text, str):
                raise TypeError(f"request {k}: texts must be str, got {type(text).__name__}")
    data = [{INPUT_NAME: {"content": [text], "shape": [1]}} for group in groups for text in group]
    Path(path).write_text(json.dumps({"data": data}, ensure_ascii=False), encoding="utf-8")
    return batch_size


def _spread_for_concurrency(data: list[Any], batch_size: int, concurrency: int) -> list[Any]:
    """Repeat each group of `batch_size` entries `concurrency` times in a row (see the module docstring)."""
    groups = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]
    return [entry for group in groups for _ in range(concurrency) for entry in group]


def _prepare_input(input_json: Path, batch_size: int, concurrency: int, work_dir: Path) -> Path:
    try:
        document = json.loads(input_json.read_text(encoding="utf-8"))
        data = document["data"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{input_json} is not perf_analyzer input data ({exc})") from exc
    if not isinstance(data, list) or not data or not all(isinstance(entry, dict) for entry in data):
        raise ValueError(f"{input_json}: 'data' must be a non-empty list of tensor entries (one per text)")
    if len(data) % batch_size:
        raise ValueError(
            f"{input_json} has {len(data)} entries, not a multiple of batch_size={batch_size}: "
            "requests would mix texts of different groups"
        )
    if concurrency == 1:
        return input_json
    spread = work_dir / "input_data.json"
    document = {**document, "data": _spread_for_concurrency(data, batch_size, concurrency)}
    spread.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return spread


def _float(row: dict[str, str], column: str) -> float:
    try:
        return float(row[column])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"perf_analyzer CSV has no numeric {column!r} column: {row}") from exc


def parse_csv(text: str, concurrency: int) -> dict[str, float]:
    """The row of `concurrency` in a `perf_analyzer -f` report: throughput and latencies (ms)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    matching = [row for row in rows if (row.get("Concurrency") or "").strip() == str(concurrency)]
    if not matching:
        raise ValueError(f"no row for concurrency {concurrency} in perf_analyzer CSV:\n{text}")
    row = matching[-1]
    parsed = {"infer_per_s": _float(row, "Inferences/Second")}
    for p in (50, 90, 95, 99):
        parsed[f"p{p}_ms"] = _float(row, f"p{p} latency") / 1000
    parsed["avg_ms"] = sum(_float(row, part) for part in _LATENCY_PARTS) / 1000
    parsed["server_avg_ms"] = sum(_float(row, part) for part in _SERVER_PARTS) / 1000
    return parsed


def build_command(
    executable: Path, model: str, grpc_url: str, input_json: Path, csv_path: Path, *,
    concurrency: int, batch_size: int, measurement_ms: int, max_trials: int, stability_percentage: float,
    percentile: int | None, measurement_request_count: int | None, request_count: int | None = None,
    extra_args: Sequence[str] = (), protocol: str = "grpc",
) -> list[str]:  # fmt: skip
    if protocol not in ("grpc", "http"):
        raise ValueError(f"unknown protocol {protocol!r} (grpc, http)")
    command = [
        str(executable),
        "-m", model,
        "-i", protocol,
        "-u", grpc_url,
        "--input-data", str(input_json),
        "-b", str(batch_size),
        f"--concurrency-range={concurrency}:{concurrency}",
        f"--measurement-interval={measurement_ms}",
        f"--max-trials={max_trials}",
        f"--stability-percentage={stability_percentage:g}",
        "-f", str(csv_path),
    ]  # fmt: skip
    if measurement_request_count is not None:
        # count_windows: each window lasts until this many requests completed (>= 1 s steps), time unbounded.
        command += ["--measurement-mode=count_windows", f"--measurement-request-count={measurement_request_count}"]
    if request_count is not None:
        # One window of exactly this many requests, no stability check (perf_analyzer's --request-count).
        command.append(f"--request-count={request_count}")
    if percentile is not None:
        command.append(f"--percentile={percentile}")  # stabilise on this latency percentile instead of the mean
    command.extend(extra_args)
    return command


def run_perf_analyzer(
    model: str,
    grpc_url: str,
    input_json: str | os.PathLike[str],
    *,
    concurrency: int = 1,
    batch_size: int = 1,
    measurement_ms: int = 2000,
    timeout_s: float = 60,
    max_trials: int = 5,
    stability_percentage: float = 50,
    percentile: int | None = None,
    measurement_request_count: int | None = None,
    request_count: int | None = None,
    executable: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    protocol: str = "grpc",
) -> PerfResult:
    """Measure `model` at one concurrency level over gRPC (`protocol="http"`: over HTTP, `grpc_url` then being
    Triton's HTTP host:port) with the texts of `input_json`.

    Synchronous requests, `concurrency` at a time, `batch_size` texts each (what `write_input_data` returned).
    perf_analyzer measures windows of `measurement_ms` until the last 3 agree within `stability_percentage`
    (throughput and latency; the mean, or the `percentile` latency if given) and reports those 3 together, or
    fails after `max_trials` windows (perf_analyzer's own default of 10% rarely holds on a small shared CPU
    machine, hence 50): the run takes at most ~max_trials x measurement_ms (10 s by default) plus
    a second of start-up, and is killed after `timeout_s` regardless. `measurement_request_count` switches to
    windows of at least that many requests instead of `measurement_ms`. `request_count` instead measures one
    window of exactly that many requests with no stability check (for a busy machine where windows never
    agree; its duration is request_count / throughput). The p50/p90/p95/p99 latencies are always reported.
    """
    if concurrency < 1 or batch_size < 1 or measurement_ms < 1 or max_trials < 3:
        raise ValueError("concurrency, batch_size and measurement_ms must be >= 1 and max_trials >= 3")
    if request_count is not None and measurement_request_count is not None:
        raise ValueError("pass request_count or measurement_request_count, not both")
    exe = Path(executable) if executable is not None else find_perf_analyzer()
    if exe is None:
        raise PerfAnalyzerNotFound(
            f"perf_analyzer not found at {default_install_path()}: run bench/install_perf_analyzer.sh or set ${ENV_VAR}"
        )
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-") as tmp:
        work_dir = Path(tmp)
        data_path = _prepare_input(Path(input_json), batch_size, concurrency, work_dir)
        csv_path = work_dir / "report.csv"
        command = build_command(
            exe, model, grpc_url, data_path, csv_path, concurrency=concurrency, batch_size=batch_size,
            measurement_ms=measurement_ms, max_trials=max_trials, stability_percentage=stability_percentage,
            percentile=percentile, measurement_request_count=measurement_request_count, request_count=request_count,
            extra_args=extra_args, protocol=protocol,
        )  # fmt: skip
        try:
            proc = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                timeout=timeout_s, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            output = exc.output if isinstance(exc.output, str) else (exc.output or b"").decode(errors="replace")
            raise PerfAnalyzerError(f"perf_analyzer did not finish in {timeout_s:g} s", command, output) from exc
        output = proc.stdout
        if proc.returncode != 0:
            hint = (
                " (no stable measurement: raise stability_percentage, measurement_ms or max_trials, "
                "or measure a fixed request_count)"
                if "stable measurement" in output
                else ""
            )
            raise PerfAnalyzerError(f"perf_analyzer exited with {proc.returncode}{hint}", command, output)
        if not csv_path.is_file():
            raise PerfAnalyzerError("perf_analyzer wrote no CSV report", command, output)
        report = csv_path.read_text(encoding="utf-8")
    try:
        parsed = parse_csv(report, concurrency)
    except ValueError as exc:
        raise PerfAnalyzerError(str(exc), command, output) from exc
    counts = re.findall(r"Request count:\s*(\d+)", output)
    return PerfResult(
        model=model,
        concurrency=concurrency,
        batch_size=batch_size,
        infer_per_s=parsed["infer_per_s"],
        requests_per_s=parsed["infer_per_s"] / batch_size,
        texts_per_s=parsed["infer_per_s"],
        p50_ms=parsed["p50_ms"],
        p90_ms=parsed["p90_ms"],
        p95_ms=parsed["p95_ms"],
        p99_ms=parsed["p99_ms"],
        avg_ms=parsed["avg_ms"],
        server_avg_ms=parsed["server_avg_ms"],
        request_count=int(counts[0]) if counts else None,
        command=command,
        csv=report,
        output=output,
    )


def sample_texts(requests: int, batch_size: int) -> list[list[str]]:
    """Distinct English sentences of varied length, `batch_size` per request (no data files needed)."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "text", "is", "embedded"]
    groups = []
    for k in range(requests):
        group = []
        for i in range(batch_size):
            n = 6 + (k * batch_size + i) * 7 % 40
            group.append(f"request {k} text {i}: " + " ".join(words[(k + i + j) % len(words)] for j in range(n)))
        groups.append(group)
    return groups


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run perf_analyzer against the text ensemble over gRPC.")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--grpc-url", default="127.0.0.1:8001")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch-size", type=int, default=8, help="texts per request")
    parser.add_argument("--requests", type=int, default=16, help="distinct requests in the input data")
    parser.add_argument("--texts-file", type=Path, help="one text per line (default: built-in sentences)")
    parser.add_argument("--measurement-ms", type=int, default=2000)
    parser.add_argument("--max-trials", type=int, default=5)
    parser.add_argument("--stability-percentage", type=float, default=50)
    parser.add_argument("--percentile", type=int, default=None, help="stabilise on this latency percentile")
    parser.add_argument("--request-count", type=int, default=None, help="one window of N requests, no stability")
    parser.add_argument("--timeout-s", type=float, default=60)
    args = parser.parse_args(argv)

    if args.texts_file:
        lines = [line for line in args.texts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        usable = len(lines) // args.batch_size * args.batch_size
        if usable == 0:
            parser.error(f"{args.texts_file} has fewer than --batch-size={args.batch_size} texts")
        groups = [lines[i : i + args.batch_size] for i in range(0, usable, args.batch_size)]
    else:
        groups = sample_texts(args.requests, args.batch_size)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="perf_analyzer-input-") as tmp:
        input_json = Path(tmp) / "input_data.json"
        batch_size = write_input_data(groups, input_json)
        for concurrency in args.concurrency:
            try:
                result = run_perf_analyzer(
                    args.model, args.grpc_url, input_json, concurrency=concurrency, batch_size=batch_size,
                    measurement_ms=args.measurement_ms, timeout_s=args.timeout_s, max_trials=args.max_trials,
                    stability_percentage=args.stability_percentage, percentile=args.percentile,
                    request_count=args.request_count,
                )  # fmt: skip
            except PerfAnalyzerError as exc:
                print(f"error (concurrency {concurrency}): {exc}", file=sys.stderr)
                failures += 1
                continue
            print("$ " + " ".join(result.command))
            print(result.summary())
            print(result.csv.strip())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
