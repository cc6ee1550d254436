"""Reading ``torchport.json`` safely and checking it against the manifest schema.

A manifest may come from anyone (a downloaded package, a shared repository), so it is read with
limits (size, UTF-8, nesting depth) and every field is checked for its JSON type before any code
uses it. Each problem is one :class:`~torchport.runtimes.PackageError` line naming the field
(``inputs[0].shape[1]``) and what was found. File names must stay inside the package: relative,
without ``..``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from torchport.runtimes._dtypes import PROTOCOL_DATATYPES
from torchport.runtimes._errors import PackageError

__all__ = [
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_DEPTH",
    "check_package_path",
    "read_manifest",
    "validate_manifest",
]

MANIFEST_NAME = "torchport.json"
#: a manifest larger than this is refused before it is parsed
MAX_MANIFEST_BYTES = 16 << 20
#: objects and arrays nested deeper than this are refused
MAX_MANIFEST_DEPTH = 64

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Check = Callable[[str, Any], object]  # raises on a bad value; what it returns is unused


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    names: dict[type, str] = {dict: "an object", list: "an array"}
    return names.get(type(value), type(value).__name__)


def _bad(field: str, expected: str, value: Any) -> PackageError:
    return PackageError(f"{MANIFEST_NAME}: {field} must be {expected}, got {_kind(value)}")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a manifest file into a dict: at most :data:`MAX_MANIFEST_BYTES`, UTF-8, JSON, an object,
    nested at most :data:`MAX_MANIFEST_DEPTH` deep. Fields are not checked (see :func:`validate_manifest`).

    Raises:
        PackageError: one line saying which limit or rule the file breaks.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise PackageError(f"cannot read {MANIFEST_NAME}: {e.strerror or e}") from e
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PackageError(
            f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a torchport manifest"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PackageError(
            f"{MANIFEST_NAME} is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}"
        ) from None
    _check_depth(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PackageError(
            f"{MANIFEST_NAME} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise PackageError(f"{MANIFEST_NAME} nests deeper than {MAX_MANIFEST_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise PackageError(f"{MANIFEST_NAME} must hold a JSON object, got {_kind(data)}")
    return data


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than :data:`MAX_MANIFEST_DEPTH` without recursing (brackets in strings skipped)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_MANIFEST_DEPTH:
                raise PackageError(f"{MANIFEST_NAME} nests deeper than {MAX_MANIFEST_DEPTH} levels")
        elif ch in "]}":
            depth -= 1


def check_package_path(field: str, value: Any) -> str:
    """A file name of the package: a relative path inside it (no absolute path, no ``..``)."""
    if not isinstance(value, str) or not value:
        raise _bad(field, "a file name inside the package", value)
    parts = value.replace("\\", "/").split("/")
    if (
        value.startswith(("/", "\\"))
        or re.match(r"^[A-Za-z]:", value)
        or ".." in parts
        or "" in parts
        or _CONTROL.search(value)
    ):
        absolute = value.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", value)
        # an absolute path is not repeated: errors may be served over HTTP
        shown = f"an absolute path ending in {parts[-1][:80]!r}" if absolute else repr(value[:80])
        raise PackageError(
            f"{MANIFEST_NAME}: {field} {shown} is not a file inside the package "
            "(file names are relative, without '..')"
        )
    return value


# --------------------------------------------------------------------------- field checks


def _string(field: str, value: Any, *, max_len: int = 4096) -> None:
    if not isinstance(value, str) or not value or len(value) > max_len or _CONTROL.search(value):
        raise _bad(field, f"a non-empty string (at most {max_len} characters, no control characters)", value)


def _int(field: str, value: Any, *, low: int = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise _bad(field, f"an integer >= {low}", value)


def _number(field: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise _bad(field, "a number", value)


def _object(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(field, "an object", value)
    return value


def _array(field: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(field, "an array", value)
    return value


def _object_or_null(field: str, value: Any) -> None:
    if value is not None:
        _object(field, value)


def _boolean(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise _bad(field, "true or false", value)


def _version(field: str, value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    _string(field, value, max_len=64)


def _tensor(field: str, value: Any) -> None:
    spec = _object(field, value)
    for key in ("name", "dtype", "shape"):
        if key not in spec:
            raise PackageError(f"{MANIFEST_NAME}: {field}.{key} is missing")
    _string(f"{field}.name", spec["name"], max_len=1024)
    dtype = spec["dtype"]
    if not isinstance(dtype, str) or dtype.strip().lower() not in PROTOCOL_DATATYPES:
        raise _bad(f"{field}.dtype", f"one of {', '.join(PROTOCOL_DATATYPES)}", dtype)
    for i, dim in enumerate(_array(f"{field}.shape", spec["shape"])):
        if dim is None or (isinstance(dim, str) and dim and not _CONTROL.search(dim)):
            continue
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise _bad(f"{field}.shape[{i}]", "an integer >= 0, a dim name or null", dim)
    value_range = spec.get("value_range")
    if value_range is not None:
        bounds = _array(f"{field}.value_range", value_range)
        if len(bounds) != 2:
            raise _bad(f"{field}.value_range", "[low, high]", value_range)
        for i, bound in enumerate(bounds):
            _number(f"{field}.value_range[{i}]", bound)
        if bounds[0] > bounds[1]:
            raise PackageError(f"{MANIFEST_NAME}: {field}.value_range has low {bounds[0]} > high {bounds[1]}")


def _dim_range(field: str, value: Any) -> None:
    dims = _object(field, value)
    for key in ("min", "max"):
        if key not in dims:
            raise PackageError(f"{MANIFEST_NAME}: {field}.{key} is missing")
        _int(f"{field}.{key}", dims[key])
    if dims["min"] > dims["max"]:
        raise PackageError(f"{MANIFEST_NAME}: {field} has min {dims['min']} > max {dims['max']}")


def _file_record(field: str, value: Any) -> None:
    record = _object(field, value)
    sha = record.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise _bad(f"{field}.sha256", "64 lowercase hex digits", sha)
    _int(f"{field}.size", record.get("size"))


def _variant(field: str, value: Any) -> None:
    variant = _object(field, value)
    if "file" not in variant:
        raise PackageError(f"{MANIFEST_NAME}: {field}.file is missing")
    check_package_path(f"{field}.file", variant["file"])
    if "precision" in variant:
        _string(f"{field}.precision", variant["precision"], max_len=64)
    _object_or_null(f"{field}.parity", variant.get("parity"))
    for i, name in enumerate(_array(f"{field}.data_files", variant.get("data_files", []))):
        check_package_path(f"{field}.data_files[{i}]", name)
    for i, record in enumerate(_array(f"{field}.passes", variant.get("passes", []))):
        _object(f"{field}.passes[{i}]", record)


def _each(check: Check) -> Check:
    def items(field: str, value: Any) -> None:
        for i, item in enumerate(_array(field, value)):
            check(f"{field}[{i}]", item)

    return items


def _mapping(check: Check, *, keys_are_files: bool = False) -> Check:
    def entries(field: str, value: Any) -> None:
        for key, item in _object(field, value).items():
            if keys_are_files:
                check_package_path(f"{field} key", key)
            check(f"{field}[{key!r}]" if not key.isidentifier() else f"{field}.{key}", item)

    return entries


#: Hugging Face's ``config.problem_type`` values a classifier's ``extra.text.problem_type`` may hold
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


def _extra(field: str, value: Any) -> None:
    """``extra`` is free-form; only what the server reads from ``extra.text`` is checked."""
    text = _object(field, value).get("text")
    if text is None:
        return
    problem = _object(f"{field}.text", text).get("problem_type")
    if problem is not None and problem not in PROBLEM_TYPES:
        raise _bad(f"{field}.text.problem_type", f"one of {', '.join(PROBLEM_TYPES)} or null", problem)


#: field -> (check, required); fields not listed are kept as they are (forward compatible)
SCHEMA: dict[str, tuple[Check, bool]] = {
    "name": (lambda f, v: _string(f, v, max_len=256), True),
    "version": (_version, False),
    "producer": (_object, False),
    "source": (_object, False),
    "export": (_object, False),
    "extra": (_extra, False),
    "inputs": (_each(_tensor), False),
    "outputs": (_each(_tensor), False),
    "dynamic_dims": (_mapping(_dim_range), False),
    "files": (_mapping(_file_record, keys_are_files=True), False),
    "variants": (_mapping(_variant), False),
    "passes": (_each(_object), False),
    "parity": (_object_or_null, False),
    "validated": (_boolean, False),
}


def validate_manifest(data: Any, *, newest: int) -> None:
    """Check a manifest dict against the schema (any version up to ``newest``).

    Raises:
        PackageError: naming the first field that is missing or of the wrong type.
    """
    if not isinstance(data, dict):
        raise PackageError(f"{MANIFEST_NAME} must hold a JSON object, got {_kind(data)}")
    version = data.get("schema_version")
    if version is None:
        raise PackageError(f"{MANIFEST_NAME} has no schema_version; is this a torchport package?")
    _int("schema_version", version, low=1)
    if version > newest:
        raise PackageError(
            f"{MANIFEST_NAME} has schema_version {version}, newer than this torchport reads "
            f"({newest}); upgrade torchport"
        )
    for field, (check, required) in SCHEMA.items():
        if field in data:
            check(field, data[field])
        elif required:
            raise PackageError(f"{MANIFEST_NAME}: {field} is missing")
