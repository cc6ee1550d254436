"""`torchport serve PATH`: serve a package or a repository of packages over the Open Inference Protocol v2.

No torch: this command runs in the serving image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer


def serve(
    path: Optional[Path] = typer.Argument(
        None,
        help="A model package folder (out/cnn), or a folder of packages: <name>/ or <name>/<version>/.",
    ),
    installed: list[str] = typer.Option(
        [],
        "--installed",
        help="Serve an installed model wheel (`torchport package`, then pip install) instead of PATH; "
        "repeat for several, '*' for all, e.g. --installed cnn.",
    ),
    config: Path = typer.Option(
        None,
        "--config",
        help="serve.toml: \\[server] settings and one \\[models.FOLDER] table per model (variant, "
        "max_batch_size, max_queue_delay_ms, instances, intra_op_threads, provider, version_policy, warmup, "
        "warmup_inputs, name). Flags given on the command line win over \\[server] and are every model's "
        "defaults. Example: torchport serve models/ --config serve.toml",
    ),
    host: str = typer.Option(
        None, "--host", help="Address to listen on (default 127.0.0.1; 0.0.0.0 in containers)."
    ),
    port: int = typer.Option(None, "--port", help="HTTP port (default 8000; 0 picks a free one)."),
    grpc_port: int = typer.Option(
        None,
        "--grpc-port",
        help="Also serve the protocol over gRPC (Triton's GRPCInferenceService), e.g. 8001.",
    ),
    metrics_port: int = typer.Option(
        None,
        "--metrics-port",
        help="Serve /metrics without auth on this port too, e.g. 8002 (default: only on the main port).",
    ),
    metrics_public: bool = typer.Option(
        None, "--metrics-public/--no-metrics-public", help="Let /metrics through without the API key."
    ),
    provider: list[str] = typer.Option(
        None,
        "--provider",
        help="Execution provider: cpu, cuda, tensorrt or a full ONNX Runtime name; repeat (or comma-separate) "
        "for an ordered list, e.g. --provider tensorrt --provider cuda.",
    ),
    allow_fallback: bool = typer.Option(
        None,
        "--allow-fallback/--no-allow-fallback",
        help="Serve on the next available provider when a requested one is missing.",
    ),
    variant: str = typer.Option(
        None, "--variant", help="Package variant to serve: fp32 (default), fp16 or int8."
    ),
    max_batch_size: int = typer.Option(
        None, "--max-batch-size", help="Dynamic batching: most rows merged into one run (default 32; 1: off)."
    ),
    max_queue_delay_ms: float = typer.Option(
        None,
        "--max-queue-delay-ms",
        help="Longest a request waits for others to join its batch. 0 (default): run as soon as a worker is "
        "free, merging whatever queued up while all workers were busy.",
    ),
    threads: int = typer.Option(
        None, "--threads", help="Inference worker threads (batches in flight per model). Default: CPU count."
    ),
    intra_op_threads: int = typer.Option(
        None,
        "--intra-op-threads",
        help="ONNX Runtime threads inside one run (default 1; raise for large models, few workers).",
    ),
    inline_below_us: float = typer.Option(
        None,
        "--inline-below-us",
        help="Run a model on the event loop, not the worker pool, while its runs average under this many "
        "microseconds (default 30; tiny models: a thread hand-off costs more than the run). 0: always the pool.",
    ),
    warmup: int = typer.Option(
        None, "--warmup", help="Warm-up runs per model before it reports ready (default 2)."
    ),
    warmup_inputs: Path = typer.Option(
        None,
        "--warmup-inputs",
        help="Warm up on these inputs (.npz, one array per input) instead of random ones.",
    ),
    version_policy: str = typer.Option(
        None,
        "--version-policy",
        help="Versions to serve: latest (default), latest:N, all, specific:1,3.",
    ),
    model_control: str = typer.Option(
        None,
        "--model-control",
        help="none (default: load all at start), explicit (load only --load NAME / the config's models; "
        "POST /v2/repository/models/NAME/load|unload), poll (watch the folder, load new or changed versions).",
    ),
    load: list[str] = typer.Option(
        None, "--load", help="With --model-control explicit: a model to load at start (repeatable)."
    ),
    poll_interval: float = typer.Option(
        None, "--poll-interval", help="Seconds between folder scans with --model-control poll (default 2)."
    ),
    exit_on_error: bool = typer.Option(
        None,
        "--exit-on-error/--no-exit-on-error",
        help="Exit 1 when a model fails to load at start (default: on for one package, off for a repository).",
    ),
    strict_readiness: bool = typer.Option(
        None,
        "--strict-readiness/--no-strict-readiness",
        help="/v2/health/ready is 200 only when every model is ready (default: when one is).",
    ),
    api_key_env: str = typer.Option(
        None,
        "--api-key-env",
        help="Require 'Authorization: Bearer <key>', the key read from this env variable.",
    ),
    api_key_file: Path = typer.Option(
        None, "--api-key-file", help="Require 'Authorization: Bearer <key>', the key read from this file."
    ),
    max_request_bytes: int = typer.Option(
        None, "--max-request-bytes", help="Largest request body accepted (default 64 MiB; 413 above it)."
    ),
    drain_timeout: float = typer.Option(
        None,
        "--drain-timeout",
        help="Seconds SIGTERM waits for in-flight requests before exiting (default 30).",
    ),
    access_log: bool = typer.Option(
        None, "--access-log/--no-access-log", help="One JSON line per request on stderr (default on)."
    ),
    max_connections: int = typer.Option(
        None,
        "--max-connections",
        help="Open connections at most; more get 503 and are closed. Default: what the open-file limit "
        "(ulimit -n) leaves room for. Example: --max-connections 2000",
    ),
    header_timeout: float = typer.Option(
        None,
        "--header-timeout",
        help="Seconds a request's whole header block may take (default 10; 408 after).",
    ),
    body_timeout: float = typer.Option(
        None, "--body-timeout", help="Seconds a request's whole body may take (default 60; 408 after)."
    ),
    max_header_bytes: int = typer.Option(
        None, "--max-header-bytes", help="Largest request header block (default 64 KiB; 431 above it)."
    ),
    max_inflight_body_bytes: int = typer.Option(
        None,
        "--max-inflight-body-bytes",
        help="Request body bytes held across all connections (default 256 MiB; 503 + retry-after above it).",
    ),
) -> None:
    """Serve model packages over the Open Inference Protocol v2 (KServe v2 / Triton HTTP and gRPC).

    Example: torchport serve out/cnn --port 8000 --grpc-port 8001 --max-batch-size 32

    Example: torchport serve models/ --config serve.toml --model-control poll
    """
    from torchport.runtimes import UsageError
    from torchport.runtimes.server import InferenceServer, ServerConfig
    from torchport.runtimes.server._accesslog import configure_logging
    from torchport.runtimes.server._installed import installed_repository

    flags = {
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "metrics_public": metrics_public,
        "providers": [p for item in provider for p in item.split(",") if p.strip()] if provider else None,
        "allow_fallback": allow_fallback,
        "variant": variant,
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "threads": threads,
        "intra_op_threads": intra_op_threads,
        "inline_below_us": inline_below_us,
        "warmup": warmup,
        "warmup_inputs": str(warmup_inputs) if warmup_inputs else None,
        "version_policy": version_policy,
        "model_control": model_control,
        "load": load or None,
        "poll_interval": poll_interval,
        "exit_on_error": exit_on_error,
        "strict_readiness": strict_readiness,
        "api_key_env": api_key_env,
        "api_key_file": str(api_key_file) if api_key_file else None,
        "max_request_bytes": max_request_bytes,
        "drain_timeout": drain_timeout,
        "access_log": access_log,
        "max_connections": max_connections,
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_header_bytes": max_header_bytes,
        "max_inflight_body_bytes": max_inflight_body_bytes,
    }
    given: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    cfg = ServerConfig.from_toml(config, **given) if config else ServerConfig(**given)
    configure_logging(cfg.access_log)
    if (path is None) == (not installed):
        raise UsageError("give either PATH or --installed NAME (e.g. torchport serve out/cnn)")
    if path is not None:
        server = InferenceServer(path, cfg)
        server.flag_overrides = given
        server.run()
        return
    with installed_repository(installed) as repo:
        server = InferenceServer(repo, cfg)
        server.flag_overrides = given
        server.run()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
