"""The `bge-triton` command: export, serve, serve-proxy, make-bench-model."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bge_triton.client.proxy.settings import ProxySettings

log = logging.getLogger("bge_triton")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="convert a Hugging Face checkpoint into a Triton model repository")
    p.add_argument("--model", required=True, help="hub id (BAAI/bge-large-zh-v1.5) or local checkpoint directory")
    p.add_argument("--name", help="served model name (default: the last part of --model)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run ONNX Runtime's transformer optimiser (fused attention, skip-layernorm, bias-gelu) on the fp32 "
        "graph before fp16/int8 conversion; parity is checked on the result (default: --optimize)",
    )
    p.add_argument(
        "--target",
        choices=("local", "container-gpu"),
        default="local",
        help="local: onnxruntime inside the Python backend; container-gpu: onnxruntime_onnx on GPU",
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=2000)
    p.add_argument("--encoder-instances", type=int, default=1)
    p.add_argument("--pad-to-multiple-of", type=int, default=8)
    p.add_argument(
        "--tensorrt",
        action="store_true",
        help="container-gpu: TensorRT execution accelerator in Triton's onnxruntime backend (FP16)",
    )
    p.add_argument("--max-queue-size", type=int, default=512, help="Triton rejects requests past this queue length")
    p.add_argument("--queue-timeout-ms", type=int, default=30_000, help="Triton rejects requests queued longer")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from bge_triton.export.checkpoint import CheckpointError
    from bge_triton.export.exporter import ParityError, export_model
    from bge_triton.export.repository import BatchingOptions

    opts = BatchingOptions(
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        encoder_instances=args.encoder_instances,
        pad_to_multiple_of=args.pad_to_multiple_of,
        max_queue_size=args.max_queue_size,
        queue_timeout_us=args.queue_timeout_ms * 1000,
        tensorrt=args.tensorrt,
    )
    try:
        result = export_model(
            args.model,
            args.repository,
            name=args.name,
            precision=args.precision,
            target=args.target,
            opts=opts,
            optimize=args.optimize,
        )
    except (CheckpointError, ParityError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"exported {result.facts.name} to {result.ensemble_dir.parent} "
        f"(parity min cosine {result.parity.min_cosine:.6f})"
    )
    return 0


def _add_proxy_args(p: argparse.ArgumentParser, *, port_flag: str) -> None:
    p.add_argument(port_flag, dest="proxy_port", type=int, default=8080, help="OpenAI proxy port")
    p.add_argument(
        "--served-model",
        dest="models",
        action="append",
        default=[],
        help="serve only this model (repeatable; default: every embedding model in the repository)",
    )
    p.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="ALIAS=MODEL",
        help="another name accepted in `model`, e.g. text-embedding-3-small=bge-large-zh-v1.5",
    )
    p.add_argument("--max-inputs", type=int, default=2048, help="inputs per /v1/embeddings request")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024)
    p.add_argument("--max-in-flight", type=int, default=64, help="concurrent requests before 429")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds per Triton request")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accept only this key as 'Authorization: Bearer KEY' (repeatable; also $BGE_TRITON_API_KEYS)",
    )
    p.add_argument("--api-key-file", type=Path, default=None, help="file with one API key per line")
    p.add_argument("--protect-metrics", action="store_true", help="require an API key for /metrics as well")
    p.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish after SIGTERM/SIGINT",
    )


def _proxy_settings(args: argparse.Namespace, triton_urls: list[str], protocol: str, host: str) -> ProxySettings:
    from bge_triton.client.proxy.auth import load_api_keys
    from bge_triton.client.proxy.settings import ProxySettings

    aliases = {}
    for item in args.alias:
        alias, sep, model = item.partition("=")
        if not sep or not alias or not model:
            raise SystemExit(f"error: --alias takes ALIAS=MODEL, got {item!r}")
        aliases[alias] = model
    return ProxySettings(
        triton_urls=tuple(triton_urls),
        protocol=protocol,
        host=host,
        port=args.proxy_port,
        models=tuple(args.models),
        aliases=aliases,
        max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
        request_timeout_s=args.request_timeout,
        api_keys=load_api_keys(args.api_key, args.api_key_file),
        protect_metrics=args.protect_metrics,
        grace_period_s=args.grace_period,
    )


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run tritonserver and the OpenAI proxy (default: the embedded model)")
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository (default: the embedded all-MiniLM-L6-v2, exported on first run)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (Triton's own default is 0.0.0.0)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--no-proxy", action="store_true", help="run Triton only")
    p.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="tritonserver processes on the repository (replica i uses the ports + 100*i); "
        "the proxy spreads requests over them with failover",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="restarts of a dying tritonserver within 10 minutes before serve gives up",
    )
    _add_proxy_args(p, port_flag="--proxy-port")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from bge_triton.default_repository import ensure_default_repository
    from bge_triton.launcher import LaunchError, TritonOptions, TritonServer, TritonSupervisor, ensure_port_free

    servers: list[TritonServer] = []
    stop = threading.Event()

    def forward(signum: int, _frame: object) -> None:
        log.info("received %s: shutting down tritonserver", signal.Signals(signum).name)
        for server in servers:
            server.signal(signum)
        stop.set()

    try:
        if args.replicas < 1:
            raise LaunchError("--replicas must be at least 1")
        if not args.no_proxy:
            ensure_port_free(args.host, args.proxy_port, "proxy")
        repository = args.repository or ensure_default_repository()
        replicas = [
            TritonOptions(
                repository=repository,
                host=args.host,
                http_port=args.http_port + 100 * i,
                grpc_port=args.grpc_port + 100 * i,
                metrics_port=args.metrics_port + 100 * i,
                log_verbose=args.log_verbose,
            )
            for i in range(args.replicas)
        ]
        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        for options in replicas:
            servers.append(TritonServer(options))
            servers[-1].start()
        for server in servers:
            server.wait_ready(args.ready_timeout)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for server in servers:
            server.stop()
        return 1
    for options in replicas:
        log.info(
            "Triton ready on %s: HTTP %s  gRPC %s  metrics %s",
            repository, options.http_url, options.grpc_url, options.metrics_url,
        )  # fmt: skip
    # From here on the supervisors own Triton: a signal only asks the launcher to stop (uvicorn
    # installs its own handlers while it runs and re-raises the signal into these afterwards).
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    gave_up = threading.Event()

    def give_up() -> None:  # Triton keeps dying: exit non-zero and let the orchestrator decide
        gave_up.set()
        os.kill(os.getpid(), signal.SIGTERM)

    supervisors = [TritonSupervisor(s, max_restarts=args.max_restarts, on_give_up=give_up) for s in servers]
    for supervisor in supervisors:
        supervisor.start()
    try:
        if args.no_proxy:
            while not stop.is_set() and not gave_up.is_set():
                stop.wait(0.5)
        elif not stop.is_set():  # uvicorn handles SIGINT/SIGTERM from here on: drain, then return
            from bge_triton.client.proxy.server import run_proxy

            run_proxy(_proxy_settings(args, [o.grpc_url for o in replicas], "grpc", args.host))
    finally:
        log.info("stopping tritonserver")
        for supervisor in supervisors:
            supervisor.stop()
    return 1 if gave_up.is_set() else 0


def _add_serve_proxy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve-proxy", help="run only the OpenAI proxy, in front of a Triton running elsewhere")
    p.add_argument(
        "--triton-url",
        action="append",
        default=[],
        help="Triton's gRPC (or HTTP) address, host:port (default 127.0.0.1:8001); repeat it, or separate "
        "with commas, for replicas of the same repository: round-robin with failover",
    )
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--host", default="127.0.0.1")
    _add_proxy_args(p, port_flag="--port")
    p.set_defaults(func=_cmd_serve_proxy)


def _cmd_serve_proxy(args: argparse.Namespace) -> int:
    from bge_triton.client.proxy.server import run_proxy

    urls = [u.strip() for item in args.triton_url for u in item.split(",") if u.strip()] or ["127.0.0.1:8001"]
    run_proxy(_proxy_settings(args, urls, args.protocol, args.host))
    return 0


def _add_bench_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-bench-model", help="build a randomly initialised checkpoint with a real model's exact config"
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="config + tokenizer directory (default: shared/models/bge-large-zh-v1.5)",
    )
    p.add_argument("--out", type=Path, required=True, help="where to save the checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_bench_model)


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from bge_triton.export.bench_model import make_bench_model
    from bge_triton.paths import shared_dir

    config_dir = args.config_dir or shared_dir() / "models" / "bge-large-zh-v1.5"
    out = make_bench_model(config_dir, args.out, seed=args.seed)
    print(f"saved a random-init checkpoint with the config of {config_dir.name} to {out}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from bge_triton.bench.harness import ALL_SYSTEMS

    p = sub.add_parser("bench", help="benchmark Triton, the proxy, raw onnxruntime and peer tools side by side")
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the Hugging Face checkpoint (default: the embedded all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--repository", type=Path, default=None, help="its exported model repository (default: the embedded model's)"
    )
    p.add_argument("--model", default=None, help="served name (default: the only model in the repository)")
    p.add_argument("--workload", default="sentence", choices=("short", "sentence", "passage", "full", "mix"))
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS), help=f"comma-separated subset of {ALL_SYSTEMS}")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="thread budget of every system")
    p.add_argument("--texts", type=int, default=256, help="texts in the saturation run")
    p.add_argument("--queries", type=int, default=40, help="single-text requests per latency run")
    p.add_argument("--batch", type=int, default=16, help="texts per request in the saturation run")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from bge_triton.bench.harness import ALL_SYSTEMS, RESULTS_DIR, BenchOptions, run_bench
    from bge_triton.default_repository import ensure_default_repository
    from bge_triton.export.checkpoint import embedded_default_dir

    repository = args.repository or ensure_default_repository()
    model = args.model or _only_model(repository)
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        print(f"error: unknown systems {unknown} (choose from {ALL_SYSTEMS})", file=sys.stderr)
        return 2
    opts = BenchOptions(
        checkpoint=args.checkpoint or embedded_default_dir(), repository=repository, model=model,
        workload=args.workload, systems=systems, threads=args.threads, texts=args.texts, queries=args.queries,
        batch=args.batch, concurrency=args.concurrency, out_dir=args.out or RESULTS_DIR,
    )  # fmt: skip
    report = run_bench(opts)
    failed = [name for name, r in report["systems"].items() if "error" in r]  # type: ignore[union-attr]
    return 1 if failed else 0


def _only_model(repository: Path) -> str:
    from bge_triton.model_facts import FACTS_FILE

    names = sorted(p.parent.name for p in repository.glob(f"*/{FACTS_FILE}"))
    if len(names) != 1:
        raise SystemExit(f"error: pass --model; {repository} holds {names or 'no models'}")
    return names[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bge-triton", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_serve(sub)
    _add_serve_proxy(sub)
    _add_bench_model(sub)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
