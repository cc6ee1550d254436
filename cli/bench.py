"""`torchport bench PKG|URL`: latency and throughput of a package in process, or of a running server."""

from __future__ import annotations

import typer


def _ints(value: str, option: str) -> list[int]:
    from torchport.runtimes import UsageError

    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} {value!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if not out or any(v < 1 for v in out):
        raise UsageError(f"{option} {value!r}: expected integers >= 1, e.g. 1,8,32")
    return out


def bench(
    target: str = typer.Argument(
        ...,
        help="A model package folder (timed in this process), or a running server: http://HOST:PORT"
        "\\[/v2/models/NAME] (JSON and binary tensors) or grpc://HOST:PORT.",
    ),
    variant: list[str] = typer.Option(
        None, "--variant", help="Package variants to time (default: every variant of the package)."
    ),
    protocol: str = typer.Option(
        None, "--protocol", help="Server protocols, comma-separated: json,binary (http URL) or grpc."
    ),
    model: str = typer.Option(None, "--model", help="Model on the server (default: the only ready one)."),
    concurrency: str = typer.Option(
        "1", "--concurrency", help="Requests in flight, comma-separated: 1,8,32."
    ),
    batch: str = typer.Option("1", "--batch", help="Rows per request, comma-separated: 1,8."),
    duration: float = typer.Option(5.0, "--duration", help="Seconds per measured point."),
    dim: list[str] = typer.Option(
        None,
        "--dim",
        help="Size of a non-batch dynamic dim, NAME=N (default 16 clamped to its range); '*=N' for all "
        "(on a server, unnamed -1 dims are 1 unless '*=N').",
    ),
    api_key_env: str = typer.Option(
        None, "--api-key-env", help="Send 'Authorization: Bearer <key>' with the key from this env variable."
    ),
    intra_op_threads: int = typer.Option(
        None, "--intra-op-threads", help="In process: ONNX Runtime threads per run (default: its own)."
    ),
    provider: str = typer.Option(
        "cpu", "--provider", help="In process: execution provider(s), comma-separated."
    ),
    processes: int = typer.Option(
        1,
        "--processes",
        help="Server URL: load generator processes sharing each concurrency (gRPC: one connection "
        "each), so the client is not the bottleneck.",
    ),
    cpus: str = typer.Option(
        None,
        "--cpus",
        help="Server URL: run the load generator only on these CPUs, e.g. 1 or 0,2 or 2-3 (pin the "
        "server to the others, e.g. with taskset, so the server is what is measured).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the rows as JSON (p50_ms, p90_ms, p99_ms, rps, ...)."
    ),
) -> None:
    """Measure p50/p90/p99 latency and requests/s of a package or a server.

    Example: torchport bench out/cnn --concurrency 1,8 --batch 1,8 --duration 3

    Example: torchport bench http://127.0.0.1:8000 --protocol json,binary --concurrency 1,32 --json

    Example: torchport bench grpc://127.0.0.1:8001 --model cnn --concurrency 32 --processes 4

    Example: torchport bench http://127.0.0.1:8000 --concurrency 32 --cpus 1
    """
    import os
    from pathlib import Path

    from torchport.runtimes import UsageError
    from torchport.runtimes._bench import bench_package, parse_dims

    if duration <= 0:
        raise UsageError(f"--duration must be > 0 seconds, got {duration}")
    conc = _ints(concurrency, "--concurrency")
    batches = _ints(batch, "--batch")
    dims = parse_dims(dim or [])
    if "://" in target or (not Path(target).exists() and ":" in target):
        from torchport.runtimes._loadgen import bench_server

        key = None
        if api_key_env:
            key = os.environ.get(api_key_env, "").strip()
            if not key:
                raise UsageError(
                    f"--api-key-env {api_key_env}: environment variable {api_key_env} is not set or empty"
                )
        result = bench_server(
            target,
            model=model,
            protocols=[p.strip() for p in protocol.split(",") if p.strip()] if protocol else None,
            batches=batches,
            concurrency=conc,
            duration=duration,
            dims=dims,
            api_key=key,
            processes=processes,
            cpus=cpus,
        )
    else:
        if protocol or model or processes != 1 or cpus is not None:
            raise UsageError(
                "--protocol, --model, --processes and --cpus are for a server URL; a package is timed "
                "in process"
            )
        result = bench_package(
            target,
            variants=variant or None,
            batches=batches,
            concurrency=conc,
            duration=duration,
            dims=dims,
            providers=[p for p in provider.split(",") if p.strip()],
            intra_op_threads=intra_op_threads,
        )
    typer.echo(result.to_json() if as_json else str(result))


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
