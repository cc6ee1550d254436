"""`torchport bench`: in process per variant, and load on a real server over HTTP JSON, binary and gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtimes.conftest import make_seq_package, running_server
from tests.runtimes.server._models import make_scale_package
from torchport.runtimes import UsageError
from torchport.runtimes._bench import bench_package, parse_dims
from torchport.runtimes._loadgen import bench_server

REPO_ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "target",
    "model",
    "mode",
    "batch",
    "concurrency",
    "requests",
    "errors",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "rps",
}


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchport.cli", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )


def _bench_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """`torchport bench ARGS` in a process where ``module`` cannot be imported (as if not installed)."""
    code = (
        "import runpy, sys\n"
        f"sys.modules[{module!r}] = None\n"
        f"sys.argv = ['torchport', 'bench', *{list(args)!r}]\n"
        "runpy.run_module('torchport.cli', run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )


def test_in_process_rows_per_variant_batch_and_concurrency(tmp_path):
    pkg = make_scale_package(tmp_path / "scale", 2.0, int8_factor=3.0)
    proc = _bench(str(pkg.path), "--batch", "1,4", "--concurrency", "1,2", "--duration", "0.2", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["mode"], r["batch"], r["concurrency"]) for r in rows] == [
        (v, b, c) for v in ("fp32", "int8") for b in (1, 4) for c in (1, 2)
    ]
    for r in rows:
        assert KEYS <= set(r) and r["target"] == "in-process" and r["model"] == "scale"
        assert r["requests"] > 0 and r["errors"] == 0 and r["rps"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["rows_per_s"] == pytest.approx(r["rps"] * r["batch"], rel=1e-3)
    table = _bench(str(pkg.path), "--variant", "int8", "--duration", "0.1")
    assert (
        table.returncode == 0
        and "p50 ms" in table.stdout
        and "int8" in table.stdout
        and "fp32" not in table.stdout
    )


def test_dynamic_dims_are_sized_from_dim_options(tmp_path):
    pkg = make_seq_package(tmp_path / "seq")  # batch 1..32, seq 1..16
    rows = bench_package(pkg.path, duration=0.1, dims=parse_dims(["seq=4"]))
    assert rows[0].requests > 0 and rows[0].errors == 0
    with pytest.raises(UsageError, match=r"--batch 64: the package's batch dim takes 1..32"):
        bench_package(pkg.path, batches=[64], duration=0.1)
    with pytest.raises(UsageError, match="--dim 'seq': expected NAME=N"):
        parse_dims(["seq"])


def test_server_load_over_json_binary_and_grpc(tmp_path):
    pytest.importorskip("grpc")
    pkg = make_scale_package(tmp_path / "scale", 2.0)
    with running_server(pkg.path, grpc_port=0) as srv:
        http_rows = bench_server(srv.url, concurrency=[1, 4], batches=[1, 2], duration=0.3)
        assert [(r.mode, r.batch, r.concurrency) for r in http_rows] == [
            (m, b, c) for m in ("json", "binary") for b in (1, 2) for c in (1, 4)
        ]
        grpc_rows = bench_server(f"grpc://{srv.grpc_url}", model="scale", concurrency=[4], duration=0.3)
        for r in [*http_rows, *grpc_rows]:
            assert r.model == "scale" and r.requests > 0 and r.errors == 0 and r.p50_ms > 0
        stats = srv.repository.get("scale").stats
        assert stats.success.count >= sum(r.requests for r in [*http_rows, *grpc_rows])  # every request ran
        proc = _bench(srv.url + "/v2/models/scale", "--protocol", "binary", "--duration", "0.2", "--json")
        assert proc.returncode == 0, proc.stderr
        assert [r["mode"] for r in json.loads(proc.stdout)] == ["binary"]


def test_load_from_several_generator_processes_counts_every_request(tmp_path):
    pytest.importorskip("grpc")
    pkg = make_scale_package(tmp_path / "scale", 2.0)
    with running_server(pkg.path, grpc_port=0) as srv:
        stats = srv.repository.get("scale").stats
        before = stats.success.count
        rows = bench_server(srv.url, protocols=["binary"], concurrency=[3], duration=0.3, processes=2)
        rows += bench_server(
            f"grpc://{srv.grpc_url}", model="scale", concurrency=[3], duration=0.3, processes=2
        )
        for r in rows:  # every generator process makes at least one request
            assert r.concurrency == 3 and r.requests >= 2 and r.errors == 0 and r.p50_ms > 0
        assert stats.success.count - before >= sum(r.requests for r in rows)
        with pytest.raises(UsageError, match="--processes 0: expected 1 or more"):
            bench_server(srv.url, processes=0)
    proc = _bench(str(pkg.path), "--processes", "2")
    assert proc.returncode == 1 and "--processes and --cpus are for a server URL" in proc.stderr


def test_cpus_pin_the_generator_and_a_bad_list_is_one_line(tmp_path):
    pkg = make_scale_package(tmp_path / "scale", 2.0)
    allowed = sorted(os.sched_getaffinity(0))
    one = allowed[-1]
    with running_server(pkg.path) as srv:
        # generator processes: each reports the CPUs it runs on and the load checks them
        (r,) = bench_server(
            srv.url, protocols=["binary"], concurrency=[2], duration=0.2, processes=2, cpus=[one]
        )
        assert r.requests >= 2 and r.errors == 0
        # in this process: the load's thread is pinned for the run, then put back
        (r,) = bench_server(srv.url, protocols=["json"], duration=0.2, cpus=str(one))
        assert r.requests >= 1 and sorted(os.sched_getaffinity(0)) == allowed
        proc = _bench(srv.url, "--protocol", "binary", "--duration", "0.2", "--cpus", str(one), "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)[0]["errors"] == 0
        for bad in ("x", "3-1", "-1"):
            with pytest.raises(UsageError, match=r"expected CPU numbers, e.g. 1 or 0,2 or 2-3"):
                bench_server(srv.url, cpus=bad)
        missing = max(allowed) + 1
        with pytest.raises(UsageError, match=rf"--cpus {missing}: CPU {missing} is not available to this"):
            bench_server(srv.url, cpus=[missing])
        proc = _bench(srv.url, "--cpus", f"0-{missing}")
        assert proc.returncode == 1
        assert f"CPU {missing} is not available to this process; available: " in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = _bench(str(pkg.path), "--cpus", "0")
    assert proc.returncode == 1 and "--cpus are for a server URL" in proc.stderr


def test_errors_are_counted_and_misuse_is_one_line(tmp_path, monkeypatch):
    pkg = make_scale_package(tmp_path / "scale", 2.0)
    monkeypatch.setenv("TP_BENCH_KEY", "0123456789abcdef")
    with running_server(pkg.path, api_key_env="TP_BENCH_KEY") as srv:
        with pytest.raises(Exception, match="401"):
            bench_server(srv.url, model="scale", duration=0.1)  # metadata needs the key too
        rows = bench_server(srv.url, model="scale", duration=0.2, api_key="0123456789abcdef")
        assert rows[0].errors == 0 and rows[0].requests > 0
        too_big = bench_server(
            srv.url, model="scale", batches=[100], duration=0.2, api_key="0123456789abcdef"
        )
        assert too_big[0].requests == 0 and too_big[0].errors > 0  # 400s are errors, not latencies
        proc = _bench(srv.url, "--protocol", "grpc", "--duration", "0.1")
        assert proc.returncode == 1 and "error: --protocol grpc does not go to" in proc.stderr
    proc = _bench("http://127.0.0.1:1", "--duration", "0.1")
    assert proc.returncode == 1 and "error: cannot reach" in proc.stderr and "Traceback" not in proc.stderr
    proc = _bench(str(pkg.path), "--concurrency", "0")
    assert proc.returncode == 1 and "--concurrency '0': expected integers >= 1" in proc.stderr


def test_http_load_needs_no_hpack_and_grpc_load_says_what_to_install(tmp_path):
    """hpack is for the gRPC client only: HTTP load runs without it; gRPC load names the package."""
    pkg = make_scale_package(tmp_path / "scale", 2.0)
    with running_server(pkg.path, grpc_port=0) as srv:
        proc = _bench_without("hpack", srv.url, "--protocol", "binary", "--duration", "0.2", "--json")
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        assert [r["mode"] for r in rows] == ["binary"] and rows[0]["requests"] > 0 and rows[0]["errors"] == 0
        proc = _bench_without("hpack", f"grpc://{srv.grpc_url}", "--model", "scale", "--duration", "0.2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: gRPC load (a grpc:// URL) needs hpack: pip install 'torchport[serve]' (or pip install hpack)"
    ]


def test_help_renders_with_examples():
    proc = _bench("--help")
    assert proc.returncode == 0, proc.stderr
    assert "/v2/models/NAME" in proc.stdout and "Example: torchport bench out/cnn" in proc.stdout
