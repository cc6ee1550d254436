"""Open Inference Protocol v2 codec: JSON tensors and Triton's binary tensor data extension.

Decoding turns a request body into numpy arrays; encoding turns output arrays into a response body
(JSON, or a JSON header followed by raw tensor bytes when binary output is asked for).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from torchport.runtimes._dtypes import PROTOCOL_DATATYPES
from torchport.runtimes._errors import InferenceInputError

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is optional
    _orjson = None  # type: ignore[assignment]
import json as _json

#: protocol datatype -> manifest dtype name
DTYPE_OF: dict[str, str] = {v: k for k, v in PROTOCOL_DATATYPES.items()}
#: protocol datatype -> numpy dtype of its wire representation (BF16 travels as uint16 bits)
_WIRE: dict[str, np.dtype] = {
    dt: np.dtype(np.uint16 if dt == "BF16" else name)
    for name, dt in PROTOCOL_DATATYPES.items()
    if dt != "BYTES"
}
_WIRE_LE = {k: v.newbyteorder("<") for k, v in _WIRE.items()}

HEADER_LENGTH = "inference-header-content-length"
_FLOATS = frozenset({"FP16", "FP32", "FP64"})
#: most dims a tensor may have (numpy's own limit is 64)
MAX_DIMS = 32
#: Python types a JSON element may have, per datatype (no coercion: null, "1" or true for FP32 is a 400)
_JSON_TYPES: dict[str, frozenset[type]] = {
    dt: frozenset(
        {bool}
        if dt == "BOOL"
        else {str}
        if dt == "BYTES"
        else {int, float}
        if dt in _FLOATS or dt == "BF16"
        else {int}
    )
    for dt in PROTOCOL_DATATYPES.values()
}
_WANTED = {"BOOL": "true/false", "BYTES": "strings"}


class HTTPError(Exception):
    """An error with an HTTP status whose message is safe to send to the client."""

    def __init__(self, status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def bad_request(message: str) -> HTTPError:
    return HTTPError(400, message)


def json_loads(data: bytes | memoryview) -> Any:
    if _orjson is not None:
        return _orjson.loads(data)
    return _json.loads(bytes(data))


def json_dumps(obj: Any) -> bytes:
    """Serialize to JSON bytes; numpy arrays become (nested) lists."""
    if _orjson is not None:
        return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)
    return _json.dumps(obj, default=_json_default, separators=(",", ":")).encode()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


class InputSignature(Protocol):
    """What :func:`decode_infer_request` needs of a model's signature (see ``_signature.InputSignature``)."""

    def check_declared(
        self, name: str, datatype: str, shape: tuple[int, ...], seen: dict[str, tuple[int, str]]
    ) -> None: ...


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request-level default


@dataclass
class InferRequest:
    """A decoded infer request."""

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[RequestedOutput] | None
    binary_output: bool = False
    parameters: dict[str, Any] | None = None
    #: ``inputs`` were built from a text model's ``text`` input (set by the server)
    text: bool = field(default=False, init=False)


# -- BYTES ---------------------------------------------------------------------------------------


def _decode_bytes_elements(buf: memoryview, name: str) -> list[bytes]:
    out = []
    pos, end = 0, len(buf)
    while pos < end:
        if pos + 4 > end:
            raise bad_request(f"input {name!r}: truncated BYTES element length at offset {pos}")
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if pos + n > end:
            raise bad_request(f"input {name!r}: BYTES element of {n} bytes runs past the end of its data")
        out.append(bytes(buf[pos : pos + n]))
        pos += n
    return out


def _encode_bytes_elements(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.reshape(-1):
        b = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def _as_text(items: list[Any]) -> list[str]:
    return [i.decode("utf-8", "surrogateescape") if isinstance(i, bytes) else str(i) for i in items]


def float_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even) and return the uint16 bit patterns."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    return (rounded >> 16).astype(np.uint16)


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(bits).view(np.uint16).astype(np.uint32) << 16).view(np.float32)


# -- decoding ------------------------------------------------------------------------------------


_INTS = frozenset({int})


def _shape(value: Any, name: str) -> tuple[int, ...]:
    plain = type(value) is list and set(map(type, value)) <= _INTS and (not value or min(value) >= 0)
    if not plain and (  # the fast test above covers the usual list of plain ints
        not isinstance(value, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        shown = repr(value) if len(repr(value)) <= 200 else repr(value)[:200] + "..."
        raise bad_request(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shown}")
    if len(value) > MAX_DIMS:
        raise bad_request(f"input {name!r}: 'shape' has {len(value)} dims; at most {MAX_DIMS} are supported")
    return tuple(value)


def element_count(shape: tuple[int, ...]) -> int:
    """Elements of ``shape`` (exact: Python ints never wrap)."""
    return math.prod(shape)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{what} must be true or false, got {value!r}")
    return value


def _flatten(data: Any) -> Any:
    """Flatten nested lists (the protocol allows nested or flat ``data``)."""
    if data and isinstance(data[0], list):
        flat: list[Any] = []
        stack = [data]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(reversed(item))
            else:
                flat.append(item)
        return flat
    return data


#: from this many elements on, float data is checked and converted by :func:`_plain_numbers` (below
#: it, the per-element type test is cheaper than numpy's fixed costs)
_VECTOR_CHECK_FROM = 32


#: struct.Struct per (format code, element count): compiled once, a few sizes in use at a time
_PACKERS: dict[tuple[str, int], struct.Struct] = {}
_PACKERS_MAX = 64


def _packer(code: str, count: int) -> struct.Struct:
    key = (code, count)
    packer = _PACKERS.get(key)
    if packer is None:
        if len(_PACKERS) >= _PACKERS_MAX:  # many sizes (e.g. varied batch sizes): start over
            _PACKERS.clear()
        packer = _PACKERS[key] = struct.Struct(f"{count}{code}")
    return packer


def _plain_numbers(flat: list[Any], datatype: str) -> np.ndarray | None:
    """``flat`` as a numpy array of ``datatype`` (FP16, FP32 or FP64) when every element is a JSON
    number (Python int or float, no bool), else None (the caller's element-by-element check then
    names what is wrong).

    One C-level conversion instead of a per-element type test: a ``struct.Struct`` of
    ``len(flat)`` floats packs straight into the array (about a third of ``array.array``'s time:
    one call over the unpacked list instead of an item-by-item append) and takes only real
    numbers (None, strings, lists and objects raise); a bool, which it takes as 0 or 1, can only
    hide among the values equal to 0 or 1, so only those are looked at one by one.
    """
    code = "f" if datatype == "FP32" else "d"  # FP16 from doubles: one rounding, as np.fromiter
    arr = np.empty(len(flat), np.float32 if code == "f" else np.float64)
    try:
        _packer(code, len(flat)).pack_into(arr.data, 0, *flat)
    except (struct.error, TypeError, OverflowError):
        return None
    suspects = np.flatnonzero((arr == 0) | (arr == 1))
    if len(suspects) and any(type(flat[i]) is bool for i in suspects.tolist()):
        return None
    return arr if datatype != "FP16" else arr.astype(np.float16)


def _decode_json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    count = element_count(shape)
    flat = _flatten(data)
    if len(flat) != count:
        raise bad_request(f"input {name!r}: shape {list(shape)} needs {count} values, 'data' has {len(flat)}")
    if datatype in _FLOATS and count >= _VECTOR_CHECK_FROM:
        arr = _plain_numbers(flat, datatype)
        if arr is not None:
            return arr.reshape(shape)
    kinds = set(map(type, flat))
    if not kinds <= _JSON_TYPES[datatype]:
        got = ", ".join(
            sorted("null" if k is type(None) else k.__name__ for k in kinds - _JSON_TYPES[datatype])
        )
        raise bad_request(
            f"input {name!r}: data does not match datatype {datatype}: {datatype} data must be "
            f"{_WANTED.get(datatype, 'numbers' if datatype in _FLOATS or datatype == 'BF16' else 'integers')}, "
            f"got {got}"
        )
    try:
        if datatype == "BYTES":
            arr = np.array(flat, dtype=object)
        elif datatype == "BF16":
            arr = float_to_bf16_bits(np.array(flat, dtype=np.float32))
        elif datatype in _FLOATS:
            arr = np.fromiter(flat, _WIRE[datatype], count)
        else:
            arr = np.array(flat, dtype=_WIRE[datatype])
    except (ValueError, TypeError, OverflowError) as e:
        raise bad_request(f"input {name!r}: data does not match datatype {datatype}: {e}") from None
    return arr.reshape(shape)


def _decode_binary_tensor(name: str, datatype: str, shape: tuple[int, ...], chunk: memoryview) -> np.ndarray:
    count = element_count(shape)
    if datatype == "BYTES":
        if count * 4 > len(chunk):
            raise bad_request(
                f"input {name!r}: shape {list(shape)} needs {count} BYTES elements (4 bytes each at least), "
                f"binary_data_size is {len(chunk)}"
            )
        items = _decode_bytes_elements(chunk, name)
        if len(items) != count:
            raise bad_request(
                f"input {name!r}: shape {list(shape)} needs {count} BYTES elements, got {len(items)}"
            )
        return np.array(_as_text(items), dtype=object).reshape(shape)
    wire = _WIRE_LE[datatype]
    if len(chunk) != count * wire.itemsize:
        raise bad_request(
            f"input {name!r}: binary_data_size is {len(chunk)} bytes, shape {list(shape)} of {datatype} "
            f"needs {count * wire.itemsize}"
        )
    arr = np.frombuffer(chunk, dtype=wire)
    if datatype == "BOOL":
        arr = arr.view(np.bool_)
    return arr.reshape(shape)


def decode_infer_request(
    body: bytes,
    header_length: int | None = None,
    expected: Mapping[str, str] | None = None,
    *,
    signature: InputSignature | None = None,
) -> InferRequest:
    """Decode an infer request body.

    Args:
        body: the HTTP body.
        header_length: value of ``Inference-Header-Content-Length`` (JSON header size) when the
            body carries binary tensor data after the JSON.
        expected: ``{input name: protocol datatype}`` of the model, to reject a wrong datatype early.
        signature: the model's inputs: each input's name, datatype and shape are checked against
            it before its data is decoded.

    Example:
        >>> body = b'{"id": "7", "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}'
        >>> req = decode_infer_request(body)
        >>> req.id, req.inputs["x"].dtype, req.inputs["x"].shape
        ('7', dtype('float32'), (1, 2))

    Raises:
        HTTPError: 400 with a message naming the input and the problem.
    """
    view = memoryview(body)
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise bad_request(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
            )
        header, binary = view[:header_length], view[header_length:]
    else:
        header, binary = view, view[len(body) :]
    try:
        req = json_loads(header)
    except ValueError as e:
        raise bad_request(f"request body is not valid JSON: {e}") from None
    if not isinstance(req, dict):
        raise bad_request("request body must be a JSON object with an 'inputs' list")
    inputs_json = req.get("inputs")
    if not isinstance(inputs_json, list) or not inputs_json:
        raise bad_request("request must have a non-empty 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    seen_dims: dict[str, tuple[int, str]] = {}
    offset = 0
    for item in inputs_json:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise bad_request("each input must be an object with 'name', 'shape', 'datatype' and 'data'")
        name = item["name"]
        if name in inputs:
            raise bad_request(f"input {name!r} is given twice")
        datatype = item.get("datatype")
        if datatype not in DTYPE_OF:
            raise bad_request(
                f"input {name!r}: unknown datatype {datatype!r}; use one of: {', '.join(DTYPE_OF)}"
            )
        if (
            expected is not None
            and name in expected
            and expected[name] != datatype
            and not getattr(signature, "also_takes", lambda n, d: False)(name, datatype)
        ):
            raise bad_request(f"input {name!r} has datatype {datatype}, the model expects {expected[name]}")
        shape = _shape(item.get("shape"), name)
        if signature is not None:
            try:
                signature.check_declared(name, datatype, shape, seen_dims)
            except InferenceInputError as e:
                raise bad_request(str(e)) from None
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad_request(f"input {name!r}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise bad_request(
                    f"input {name!r}: binary_data_size {size} runs past the end of the binary data "
                    f"({len(binary) - offset} bytes left)"
                )
            inputs[name] = _decode_binary_tensor(name, datatype, shape, binary[offset : offset + size])
            offset += size
        elif "data" in item:
            inputs[name] = _decode_json_tensor(name, datatype, shape, item["data"])
        else:
            raise bad_request(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if offset != len(binary):
        raise bad_request(
            f"body has {len(binary) - offset} bytes of binary data that no input's binary_data_size accounts for"
        )
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad_request("'parameters' must be an object")
    binary_default = _flag(params.get("binary_data_output", False), "parameters.binary_data_output")
    outputs = None
    outs_json = req.get("outputs")
    if outs_json is not None:
        if not isinstance(outs_json, list):
            raise bad_request("'outputs' must be a list of {'name': ...} objects")
        outputs = []
        for o in outs_json:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise bad_request("each requested output must be an object with a 'name'")
            op = o.get("parameters") or {}
            as_binary = op.get("binary_data") if isinstance(op, dict) else None
            if as_binary is not None:
                _flag(as_binary, f"output {o['name']!r}: parameters.binary_data")
            outputs.append(RequestedOutput(o["name"], as_binary))
    rid = req.get("id")
    return InferRequest(
        id=None if rid is None else str(rid),
        inputs=inputs,
        outputs=outputs,
        binary_output=binary_default,
        parameters=params or None,
    )


# -- encoding ------------------------------------------------------------------------------------


def _json_data(arr: np.ndarray, datatype: str) -> Any:
    flat = np.ascontiguousarray(arr).reshape(-1)
    if datatype == "BYTES":
        return _as_text(list(flat))
    if datatype == "BF16":
        flat = bf16_bits_to_float(flat.view(np.uint16))
    return flat if _orjson is not None else flat.tolist()


def _binary_data(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return _encode_bytes_elements(arr)
    wire = _WIRE_LE[datatype]
    if datatype == "BF16":
        arr = arr.view(np.uint16)
    return np.ascontiguousarray(arr, dtype=wire).tobytes()


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    results: Mapping[str, np.ndarray],
    datatypes: Mapping[str, str],
    requested: list[RequestedOutput] | None,
    binary_default: bool,
) -> tuple[bytes, int | None]:
    """Encode an infer response; returns ``(body, json_header_length or None)``.

    ``results`` holds the outputs to send, in the order to send them. An output goes as binary when
    its request entry says ``binary_data: true``, or when it has no such entry and the request's
    ``parameters.binary_data_output`` is true.

    Example:
        >>> body, hlen = encode_infer_response(
        ...     "m", "1", None, {"y": np.zeros((1, 2), np.float32)}, {"y": "FP32"}, None, binary_default=True
        ... )
        >>> hlen, len(body) - hlen       # JSON header length, then 8 bytes of float32 data
        (131, 8)
    """
    binary_of = {o.name: o.binary for o in requested} if requested is not None else {}
    outputs = []
    blobs: list[bytes] = []
    for name, arr in results.items():
        datatype = datatypes[name]
        binary = binary_of.get(name)
        if binary is None:
            binary = binary_default
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = _binary_data(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(arr, datatype)
        outputs.append(entry)
    resp: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        resp["id"] = request_id
    resp["outputs"] = outputs
    header = json_dumps(resp)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
