"""Reading and writing model package folders, atomically and with verified hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchport.runtimes._errors import PackageError
from torchport.runtimes._manifest import (
    MANIFEST_NAME,
    PARITY_NAME,
    FileRecord,
    Manifest,
    manifest_from_dict,
)
from torchport.runtimes._manifest_schema import read_manifest
from torchport.runtimes._scratch import make_scratch

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _record_files(folder: Path) -> dict[str, FileRecord]:
    records = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST_NAME:
            rel = path.relative_to(folder).as_posix()
            records[rel] = FileRecord(sha256=sha256_file(path), size=path.stat().st_size)
    return records


@dataclass
class ModelPackage:
    """A loaded, verified model package folder.

    Example:
        >>> pkg = ModelPackage.load("out/mlp")          # doctest: +SKIP
        >>> pkg.manifest.inputs[0].shape
        ['batch', 16]
        >>> pkg.model_path()                             # path of model.onnx
    """

    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> ModelPackage:
        """Read the manifest and (by default) verify the sha256 and size of every file.

        Raises:
            PackageError: the folder or manifest is missing or malformed, a file is missing,
                truncated or tampered with (the error names the file).
        """
        folder = Path(path)
        manifest_path = folder / MANIFEST_NAME
        if not folder.is_dir():
            raise PackageError(f"model package {str(folder)!r} does not exist or is not a folder")
        if not manifest_path.is_file():
            raise PackageError(
                f"{str(folder)!r} is not a torchport package: {MANIFEST_NAME} is missing "
                "(create one with `torchport export`)"
            )
        try:
            manifest = manifest_from_dict(read_manifest(manifest_path))
        except PackageError as e:
            raise PackageError(f"package {folder}: {e}") from None
        pkg = cls(path=folder, manifest=manifest)
        pkg.check_contained()
        if verify:
            pkg.verify()
        return pkg

    def check_contained(self) -> None:
        """Refuse a package holding a file or folder that resolves outside it (a symlink out).

        Raises:
            PackageError: naming the entry by its package-relative name only.
        """
        root = os.path.realpath(self.path)
        for folder, dirs, files in os.walk(root):
            for name in (*dirs, *files):
                entry = os.path.join(folder, name)
                if not _inside(root, os.path.realpath(entry)):
                    rel = Path(os.path.relpath(entry, root)).as_posix()
                    raise PackageError(
                        f"package {self.path}: {rel!r} resolves outside the package (a symlink?); "
                        "refusing to read it"
                    )

    def file(self, rel: str) -> Path:
        """The path of the package file ``rel``, refused if it resolves outside the package."""
        path = self.path / rel
        if not _inside(os.path.realpath(self.path), os.path.realpath(path)):
            raise PackageError(
                f"package {self.path}: {rel!r} resolves outside the package; refusing to read it"
            )
        return path

    def verify(self) -> None:
        """Check every file listed in the manifest against its recorded size and sha256."""
        for rel, record in self.manifest.files.items():
            file = self.file(rel)
            if not file.is_file():
                raise PackageError(f"package {self.path}: file {rel!r} listed in {MANIFEST_NAME} is missing")
            size = file.stat().st_size
            if size != record.size:
                raise PackageError(
                    f"package {self.path}: file {rel!r} is {size} bytes, manifest says {record.size} "
                    "(truncated or modified); re-export the package"
                )
            if sha256_file(file) != record.sha256:
                raise PackageError(
                    f"package {self.path}: file {rel!r} does not match its sha256 in {MANIFEST_NAME} "
                    "(tampered or corrupted); re-export the package"
                )
        for name, variant in self.manifest.variants.items():
            if variant.file not in self.manifest.files:
                raise PackageError(
                    f"package {self.path}: variant {name!r} file {variant.file!r} is not listed"
                )

    def model_path(self, variant: str = "fp32") -> Path:
        """Path of the ONNX file of ``variant`` (``fp32``, ``fp16``, ``int8``)."""
        try:
            return self.file(self.manifest.variants[variant].file)
        except KeyError:
            available = ", ".join(self.manifest.variants) or "none"
            raise PackageError(
                f"package {self.path} has no variant {variant!r}; available: {available}"
            ) from None

    def parity_report(self) -> dict[str, Any] | None:
        """The parsed ``parity.json``, or ``None`` when the package has none."""
        file = self.file(PARITY_NAME)
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:
            raise PackageError(
                f"package {self.path}: cannot read {PARITY_NAME}: {type(e).__name__}"
            ) from None


def check_destination(dest: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Refuse a package destination that exists (unless ``overwrite``) or is not a folder; cheap, so
    commands call it before loading anything.

    Raises:
        PackageError: naming the destination and the fix.
    """
    path = Path(dest)
    if path.exists() and not overwrite:
        raise PackageError(
            f"{str(dest)!r} already exists; pass --force (overwrite=True) or choose another -o"
        )
    if path.exists() and not path.is_dir():
        raise PackageError(f"{str(dest)!r} exists and is not a folder")


class PackageWriter:
    """Builds a package in a temporary sibling folder and renames it into place on :meth:`commit`.

    Nothing appears at ``dest`` unless commit succeeds; on any error the temporary folder is
    removed. Use :func:`write_package` or :func:`update_package` rather than this class directly.
    """

    def __init__(
        self, dest: str | os.PathLike[str], *, overwrite: bool = False, start_from: Path | None = None
    ):
        self.dest = Path(dest).absolute()
        check_destination(dest, overwrite=overwrite)
        try:
            # a fresh name made like mkdtemp's, but created with mode 0o777 so the umask decides
            # the package folder's permissions (mkdtemp's 0o700 would survive the rename); locked
            # while written, so the next writer here removes it if this process is killed
            self._scratch = make_scratch(self.dest.parent, self.dest.name)
        except OSError as e:
            raise PackageError(f"cannot write package at {str(dest)!r}: {e}") from e
        self.path = self._scratch.path
        try:
            if start_from is not None:
                shutil.copytree(start_from, self.path, dirs_exist_ok=True)
        except OSError as e:
            shutil.rmtree(self.path, ignore_errors=True)
            self._scratch.release()
            raise PackageError(f"cannot write package at {str(dest)!r}: {e}") from e
        self.committed = False

    def commit(self, manifest: Manifest, parity: dict[str, Any] | None = None) -> ModelPackage:
        """Hash every file, write the manifest (and parity.json), and move the folder into place."""
        try:
            if parity is not None:
                (self.path / PARITY_NAME).write_text(json.dumps(parity, indent=2, default=str) + "\n")
            manifest.files = _record_files(self.path)
            for name, variant in manifest.variants.items():
                if variant.file not in manifest.files:
                    raise PackageError(f"variant {name!r} names {variant.file!r}, which was not written")
            (self.path / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
            if self.dest.exists():
                trash = self.dest.with_name(f".{self.dest.name}.old-{uuid.uuid4().hex[:8]}")
                os.replace(self.dest, trash)
                os.replace(self.path, self.dest)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(self.path, self.dest)
        except OSError as e:
            raise PackageError(f"cannot write package at {self.dest}: {e}") from e
        self.committed = True
        self._scratch.release()
        return ModelPackage(path=self.dest, manifest=manifest)

    def abort(self) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
        self._scratch.release()


@contextmanager
def write_package(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[PackageWriter]:
    """Write a new package atomically.

    Example:
        >>> with write_package("out/mlp") as w:              # doctest: +SKIP
        ...     save_onnx(w.path / "model.onnx")
        ...     pkg = w.commit(manifest)
    """
    writer = PackageWriter(dest, overwrite=overwrite)
    try:
        yield writer
    finally:
        writer.abort()


@contextmanager
def update_package(package: ModelPackage) -> Iterator[PackageWriter]:
    """Modify an existing package atomically: work on a copy, swap it in on ``commit``."""
    writer = PackageWriter(package.path, overwrite=True, start_from=package.path)
    try:
        yield writer
    finally:
        writer.abort()
