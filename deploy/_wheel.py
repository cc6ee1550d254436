"""`torchport package`: a model package as a reproducible, pip-installable wheel.

The wheel ``NAME-V-py3-none-any.whl`` holds an importable module ``NAME`` with the package files
in ``NAME/model/``; ``NAME.load()`` verifies their hashes and returns a :class:`~torchport.deploy.Model`.
It requires torchport's runtime side only (never torch), with ``cpu``/``gpu`` extras for the
ONNX Runtime build, a console script ``NAME-serve`` and a ``torchport.models`` entry point that
``torchport serve --installed NAME`` finds.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from torchport import __version__ as TORCHPORT_VERSION
from torchport.deploy._names import check_module_name, check_version, default_module_name
from torchport.deploy._output import atomic_file, refuse_existing
from torchport.runtimes import MANIFEST_NAME, ModelPackage, UsageError, sha256_file
from torchport.runtimes._manifest import Manifest
from torchport.runtimes.server._installed import ENTRY_POINT_GROUP

#: the package files go to NAME/models/<model name>/: served alone (manifest name) or in a repository
#: (folder name), the model keeps its name
PACKAGES_FOLDER = "models"
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
VARIANT_CHOICES = ("fp32", "fp16", "int8", "int4", "all")
_ZIP_EPOCH = 315532800  # 1980-01-01, the earliest time a zip entry can hold
_STORE_ABOVE = 256 * 1024 * 1024  # larger files (external weights) are stored, not deflated

_INIT_TEMPLATE = '''"""{name} {version}: the torchport model package {model!r} as a Python module.

Example:
    >>> import {name}
    >>> model = {name}.load(provider="cpu")
    >>> print(model.signature)
    {signature}
    >>> outputs = model.predict({example})   # numpy arrays in, dict of numpy arrays out
"""

from __future__ import annotations

from pathlib import Path

__version__ = {version!r}
#: the model package folder (torchport.json, model.onnx, ...): `torchport serve` takes it as is
PACKAGE_DIR = Path(__file__).resolve().parent.joinpath(*{folder!r}.split("/"))
VARIANTS = {variants!r}
DEFAULT_VARIANT = {default_variant!r}


def package_path() -> Path:
    """The model package folder inside this installed module."""
    return PACKAGE_DIR


def load(provider="cpu", variant: str = DEFAULT_VARIANT, **options):
    """Verify the package files' hashes and open the model on ``provider`` (``cpu``, ``cuda``...).

    Returns a torchport.deploy.Model: ``predict(**arrays) -> dict[str, numpy.ndarray]``, ``signature``.
    """
    from torchport.deploy import Model

    return Model.load(PACKAGE_DIR, provider=provider, variant=variant, **options)


def serve(argv: list[str] | None = None) -> None:
    """Console script ``{name}-serve``: ``torchport serve`` on this model (same options)."""
    import sys

    from torchport.cli import main

    args = sys.argv[1:] if argv is None else list(argv)
    if "--variant" not in args and not any(a.startswith("--variant=") for a in args):
        args += ["--variant", DEFAULT_VARIANT]
    main(["serve", str(PACKAGE_DIR), *args])
'''


@dataclass
class WheelResult:
    """What :func:`build_wheel` wrote."""

    path: Path
    name: str
    version: str
    variants: list[str]
    sha256: str

    def __str__(self) -> str:
        return f"{self.path} ({self.name} {self.version}, variants {', '.join(self.variants)}, sha256 {self.sha256[:12]})"


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None:
        return _ZIP_EPOCH
    try:
        return max(int(value), _ZIP_EPOCH)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not an integer number of seconds") from None


def _select_variants(manifest: Manifest, variant: str) -> list[str]:
    if variant not in VARIANT_CHOICES:
        raise UsageError(f"--variant {variant!r} is not one of {', '.join(VARIANT_CHOICES)}")
    if variant == "all":
        return list(manifest.variants)
    if variant not in manifest.variants:
        raise UsageError(
            f"the package has no {variant!r} variant; it has: {', '.join(manifest.variants)} "
            "(add one with `torchport optimize`)"
        )
    return [variant]


def _subset_manifest(manifest: Manifest, keep: list[str]) -> Manifest:
    """The manifest restricted to the ``keep`` variants (their model and data files, plus the rest)."""
    dropped = {
        f for name, v in manifest.variants.items() if name not in keep for f in [v.file, *v.data_files]
    }
    kept = {f for name in keep for f in [manifest.variants[name].file, *manifest.variants[name].data_files]}
    extra = manifest.extra
    gen = (extra or {}).get("generation")
    if isinstance(gen, dict) and isinstance(gen.get("parts"), dict):  # an encoder-decoder: every part
        parts = {}
        for part, rec in gen["parts"].items():
            variants = rec.get("variants") or {}
            for name, v in variants.items():
                (kept if name in keep else dropped).update([v["file"], *(v.get("data_files") or [])])
            parts[part] = {**rec, "variants": {k: v for k, v in variants.items() if k in keep}}
        extra = {**extra, "generation": {**gen, "parts": parts}}
    files = {rel: rec for rel, rec in manifest.files.items() if rel not in dropped or rel in kept}
    return manifest.replace(files=files, variants={k: manifest.variants[k] for k in keep}, extra=extra)


def _record_hash(data: bytes) -> tuple[str, int]:
    encoded = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={encoded}", len(data)


class _DeterministicZip:
    """Writes entries with one fixed timestamp and fixed modes; large files stored uncompressed."""

    def __init__(self, path: Path, epoch: int) -> None:
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, allowZip64=True)
        self.date_time = time.gmtime(epoch)[:6]
        self.records: list[tuple[str, str, int]] = []

    def _info(self, arcname: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(arcname, date_time=self.date_time)
        info.external_attr = (0o100644 & 0xFFFF) << 16
        info.create_system = 3
        info.compress_type = zipfile.ZIP_STORED if size > _STORE_ABOVE else zipfile.ZIP_DEFLATED
        info.file_size = size
        return info

    def add_bytes(self, arcname: str, data: bytes) -> None:
        self.zip.writestr(self._info(arcname, len(data)), data, compresslevel=6)
        self.records.append((arcname, *_record_hash(data)))

    def add_file(self, arcname: str, path: Path) -> None:
        info = self._info(arcname, path.stat().st_size)
        digest = hashlib.sha256()
        with (
            open(path, "rb") as src,
            self.zip.open(info, "w", force_zip64=info.file_size > 0x7FFFFFFF) as dst,
        ):
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
        encoded = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        self.records.append((arcname, f"sha256={encoded}", info.file_size))

    def close(self, record_name: str) -> None:
        lines = [f"{name},{h},{size}" for name, h, size in self.records] + [f"{record_name},,"]
        data = ("\n".join(lines) + "\n").encode()
        self.zip.writestr(self._info(record_name, len(data)), data, compresslevel=6)
        self.zip.close()


def _metadata(name: str, version: str, manifest: Manifest) -> bytes:
    requirement = f"torchport[serve]>={TORCHPORT_VERSION}"
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: torchport model package {manifest.name!r} (ONNX, served over the Open Inference Protocol)",
        "Requires-Python: >=3.10",
        f"Requires-Dist: {requirement}",
        f'Requires-Dist: torchport[cpu]>={TORCHPORT_VERSION}; extra == "cpu"',
        f'Requires-Dist: torchport[gpu]>={TORCHPORT_VERSION}; extra == "gpu"',
        "Provides-Extra: cpu",
        "Provides-Extra: gpu",
    ]
    return ("\n".join(lines) + "\n").encode()


def _wheel_file() -> bytes:
    return (
        f"Wheel-Version: 1.0\nGenerator: torchport {TORCHPORT_VERSION}\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()


def _entry_points(name: str) -> bytes:
    return (
        f"[console_scripts]\n{name}-serve = {name}:serve\n\n[{ENTRY_POINT_GROUP}]\n{name} = {name}:package_path\n"
    ).encode()


def wheel_filename(name: str, version: str) -> str:
    return f"{name}-{version}-py3-none-any.whl"


def build_wheel(
    package: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] = "dist",
    *,
    name: str | None = None,
    version: str | None = None,
    variant: str = "fp32",
    force: bool = False,
) -> WheelResult:
    """Build ``NAME-V-py3-none-any.whl`` from a model package, byte for byte reproducibly.

    Args:
        package: the model package folder (its hashes are verified first).
        out_dir: where the wheel goes (created if needed).
        name: module and distribution name (default: the package's model name).
        version: PEP 440 version (default: the package's version).
        variant: which variants to include: ``fp32``, ``fp16``, ``int8``, ``int4`` or ``all``.
        force: replace an existing wheel of the same name.

    Timestamps come from ``SOURCE_DATE_EPOCH`` (default 1980-01-01); entries are sorted.

    Example:
        >>> build_wheel("out/cnn", "dist", version="1.0.0")          # doctest: +SKIP
        WheelResult(path=PosixPath('dist/cnn-1.0.0-py3-none-any.whl'), ...)

    Raises:
        PackageError: the package is missing or tampered with.
        UsageError: a bad name, version or variant; the wheel exists and ``force`` is off.
    """
    pkg = ModelPackage.load(package)
    manifest = pkg.manifest
    if name is None:
        name = default_module_name(manifest.name)
        try:
            check_module_name(name)
        except UsageError:
            raise UsageError(
                f"the model name {manifest.name!r} is not a valid module name; pass --name (e.g. --name my_model)"
            ) from None
    check_module_name(name)
    version = check_version(version if version is not None else str(manifest.version))
    keep = _select_variants(manifest, variant)
    epoch = _source_date_epoch()
    dest = Path(out_dir) / wheel_filename(name, version)
    refuse_existing(dest, force, "wheel")
    if not _FOLDER_NAME.match(manifest.name):
        raise UsageError(
            f"the model name {manifest.name!r} cannot name a folder; re-export with a simpler name (letters, digits, _ . -)"
        )
    folder = f"{PACKAGES_FOLDER}/{manifest.name}"
    subset = _subset_manifest(manifest, keep)
    subset_json = _manifest_bytes(subset)
    files = sorted(rel for rel in subset.files if rel != MANIFEST_NAME)
    init = _INIT_TEMPLATE.format(
        name=name,
        version=version,
        model=manifest.name,
        folder=folder,
        variants=keep,
        default_variant="fp32" if "fp32" in keep else keep[0],
        signature=_signature_line(subset),
        example=", ".join(f"{s.name}=..." for s in subset.inputs),
    ).encode()
    dist_info = f"{name}-{version}.dist-info"
    with atomic_file(dest) as tmp:
        zf = _DeterministicZip(tmp, epoch)
        entries: list[tuple[str, bytes | Path]] = [(f"{name}/__init__.py", init)]
        entries += [(f"{name}/{folder}/{rel}", pkg.path / rel) for rel in files]
        entries.append((f"{name}/{folder}/{MANIFEST_NAME}", subset_json))
        for arcname, content in sorted(entries):
            if isinstance(content, bytes):
                zf.add_bytes(arcname, content)
            else:
                zf.add_file(arcname, content)
        zf.add_bytes(f"{dist_info}/METADATA", _metadata(name, version, manifest))
        zf.add_bytes(f"{dist_info}/WHEEL", _wheel_file())
        zf.add_bytes(f"{dist_info}/entry_points.txt", _entry_points(name))
        zf.add_bytes(f"{dist_info}/top_level.txt", f"{name}\n".encode())
        zf.close(f"{dist_info}/RECORD")
    return WheelResult(path=dest, name=name, version=version, variants=keep, sha256=sha256_file(dest))


def _manifest_bytes(manifest: Manifest) -> bytes:
    import json

    return (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()


def _signature_line(manifest: Manifest) -> str:
    ins = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in manifest.inputs)
    outs = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in manifest.outputs)
    return f"({ins}) -> ({outs})"
