"""The wheelhouse of a container build context: every wheel the image installs, so it builds offline.

Only what serving needs goes in: torchport's own wheel (installed without its dependencies: the
``onnx`` package is for export and inspection, not serving), the model wheel, ONNX Runtime (CPU or
GPU build, without the packages only its offline tools use: sympy, coloredlogs, flatbuffers...),
numpy, ml_dtypes (bfloat16), the CLI's typer/rich and the server extras (httptools, orjson, uvloop; protobuf
and hpack for gRPC; tokenizers and jinja2 for text models only), each at the version
installed here when there is one. Never torch. pip honours ``PIP_INDEX_URL``/``PIP_FIND_LINKS``/
``PIP_NO_INDEX`` for mirrors and offline wheel folders.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from torchport.runtimes import UsageError

#: resolved with their dependencies
SERVE_REQUIREMENTS = (
    "numpy", "ml_dtypes", "typer", "rich", "httptools", "orjson", "uvloop",
    "protobuf", "hpack",  # the gRPC endpoint (--grpc-port): messages and HTTP/2 header compression
)  # fmt: skip
#: installed without their dependencies (ONNX Runtime needs only numpy to run a model)
NO_DEPS_REQUIREMENTS = {"cpu": ("onnxruntime",), "gpu": ("onnxruntime-gpu",)}
#: text models only (the package carries a tokenizer): the ``text`` input on infer, generate and chat
#: templates. ``tokenizers`` goes without its huggingface_hub dependency, which only downloads from the
#: hub (``from_pretrained``); serving reads the package's own tokenizer.json.
TEXT_REQUIREMENTS = ("jinja2",)
TEXT_NO_DEPS_REQUIREMENTS = ("tokenizers",)
#: manylinux tags up to glibc 2.36 (Debian bookworm), newest first: pip does not widen --platform itself
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]


def _pinned(requirement: str) -> str:
    """``name==version`` when ``name`` is installed here (the versions torchport was tested with).

    The GPU build is released on its own schedule: without it installed here, the newest one.
    """
    try:
        return f"{requirement}=={metadata.version(requirement)}"
    except metadata.PackageNotFoundError:
        return requirement


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("ERROR")]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        raise UsageError(f"cannot {what}: pip failed: {last}")


def _download(requirements: list[str], dest: Path, python_version: str, *, deps: bool) -> None:
    target = [
        "--only-binary=:all:",
        *(arg for tag in PLATFORMS for arg in ("--platform", tag)),
        "--python-version",
        python_version,
        "--implementation",
        "cp",
    ]
    _pip(
        ["download", "-q", "-d", str(dest), *target, *([] if deps else ["--no-deps"]), *requirements],
        f"download {' '.join(requirements)} for Python {python_version}",
    )


def source_root() -> Path | None:
    """The torchport source checkout this torchport runs from (an editable install), if any."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "torchport"' in pyproject.read_text():
        return root
    return None


def torchport_wheel(dest: Path) -> None:
    """Put torchport's own wheel (pure Python; torch is only an extra) into ``dest``."""
    root = source_root()
    if root is not None:
        _pip(
            ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(root)],
            f"build torchport's wheel from {root}",
        )
    else:
        rewheel_installed(dest)


#: files pip writes at install time; a wheel must not carry them
_INSTALL_RECORDS = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def rewheel_installed(dest: Path) -> Path:
    """torchport's wheel rebuilt from its installed files (torchport installed from a wheel, not a checkout).

    Raises:
        UsageError: torchport is installed in a way that keeps no files to repack (an editable install
            outside its checkout).
    """
    from torchport.deploy._wheel import _DeterministicZip, _source_date_epoch

    dist = metadata.distribution("torchport")
    files = [
        f
        for f in dist.files or []
        if ".." not in f.parts and "__pycache__" not in f.parts and not f.name.endswith(".pyc")
        and not (f.parts[0].endswith(".dist-info") and f.name in _INSTALL_RECORDS)
    ]  # fmt: skip
    if not any(f.parts[0] == "torchport" for f in files):
        raise UsageError(
            "cannot find torchport's installed files to pack into the image; install it from a wheel"
        )
    dist_info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"torchport-{dist.version}-py3-none-any.whl"
    zf = _DeterministicZip(wheel, _source_date_epoch())
    for f in sorted(files, key=lambda f: (f.parts[0] == dist_info, f.as_posix())):
        zf.add_file(f.as_posix(), Path(str(dist.locate_file(f))))
    zf.close(f"{dist_info}/RECORD")
    return wheel


def build_wheelhouse(
    dest: Path, *, gpu: bool = False, python_version: str = "3.11", text: bool = False
) -> list[str]:
    """Fill ``dest`` with every wheel the serving image installs; returns the file names.

    ``text``: the model is a text model (its package carries a tokenizer): add the tokenizer and
    chat-template libraries, which other images do without.

    Raises:
        UsageError: pip could not get a wheel (no network and no ``PIP_FIND_LINKS``, say).
    """
    dest.mkdir(parents=True, exist_ok=True)
    _download([_pinned(r) for r in SERVE_REQUIREMENTS], dest, python_version, deps=True)
    no_deps = list(NO_DEPS_REQUIREMENTS["gpu" if gpu else "cpu"])
    if text:
        _download([_pinned(r) for r in TEXT_REQUIREMENTS], dest, python_version, deps=True)
        no_deps += TEXT_NO_DEPS_REQUIREMENTS
    _download([_pinned(r) for r in no_deps], dest, python_version, deps=False)
    torchport_wheel(dest)
    return sorted(p.name for p in dest.glob("*.whl"))
