"""`torchport serve PATH`: serve a package or a repository of packages over the Open Inference Protocol v2.

No torch: this command runs in the serving image.
"""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    path: Path = typer.Argument(
        ...,
        help="A model package folder (out/cnn), or a folder of packages: <name>/ or <name>/<version>/.",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 in containers)."),
    port: int = typer.Option(8000, "--port", help="TCP port (0 picks a free one)."),
    provider: list[str] = typer.Option(
        ["cpu"],
        "--provider",
        help="Execution provider: cpu, cuda, tensorrt or a full ONNX Runtime name; repeat (or comma-separate) "
        "for an ordered list, e.g. --provider tensorrt --provider cuda.",
    ),
    allow_fallback: bool = typer.Option(
        False,
        "--allow-fallback",
        help="Serve on the next available provider when a requested one is missing.",
    ),
    variant: str = typer.Option("fp32", "--variant", help="Package variant to serve: fp32, fp16 or int8."),
    max_batch_size: int = typer.Option(
        32, "--max-batch-size", help="Dynamic batching: most rows merged into one run (1 turns batching off)."
    ),
    max_queue_delay_ms: float = typer.Option(
        0.0,
        "--max-queue-delay-ms",
        help="Longest a request waits for others to join its batch. 0: run as soon as a worker is free, "
        "merging whatever queued up while all workers were busy.",
    ),
    threads: int = typer.Option(
        None, "--threads", help="Inference worker threads (batches in flight per model). Default: CPU count."
    ),
    intra_op_threads: int = typer.Option(
        1,
        "--intra-op-threads",
        help="ONNX Runtime threads inside one run (raise for large models, few workers).",
    ),
    inline_below_us: float = typer.Option(
        30.0,
        "--inline-below-us",
        help="Run a model on the event loop, not the worker pool, while its runs average under this many "
        "microseconds (tiny models: a thread hand-off costs more than the run). 0: always use the pool.",
    ),
    warmup: int = typer.Option(2, "--warmup", help="Warm-up runs per model before it reports ready."),
    api_key_env: str = typer.Option(
        None,
        "--api-key-env",
        help="Require 'Authorization: Bearer <key>', the key read from this env variable.",
    ),
    api_key_file: Path = typer.Option(
        None, "--api-key-file", help="Require 'Authorization: Bearer <key>', the key read from this file."
    ),
    max_request_bytes: int = typer.Option(
        64 * 1024 * 1024, "--max-request-bytes", help="Largest request body accepted (413 above it)."
    ),
    drain_timeout: float = typer.Option(
        30.0, "--drain-timeout", help="Seconds SIGTERM waits for in-flight requests before exiting."
    ),
    access_log: bool = typer.Option(
        True, "--access-log/--no-access-log", help="One JSON line per request on stderr."
    ),
) -> None:
    """Serve model packages over the Open Inference Protocol v2 (KServe v2 / Triton HTTP).

    Example: torchport serve out/cnn --port 8000 --max-batch-size 32
    """
    from torchport.runtimes.server import InferenceServer, ServerConfig
    from torchport.runtimes.server._accesslog import configure_logging

    configure_logging(access_log)
    providers = [p for item in provider for p in item.split(",") if p.strip()]
    config = ServerConfig(
        host=host,
        port=port,
        providers=providers,
        allow_fallback=allow_fallback,
        variant=variant,
        max_batch_size=max_batch_size,
        max_queue_delay_ms=max_queue_delay_ms,
        threads=threads,
        intra_op_threads=intra_op_threads,
        warmup=warmup,
        api_key_env=api_key_env,
        api_key_file=str(api_key_file) if api_key_file else None,
        max_request_bytes=max_request_bytes,
        drain_timeout=drain_timeout,
        access_log=access_log,
        inline_below_us=inline_below_us,
    )
    InferenceServer(path, config).run()


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
