"""The protobuf messages of the KServe v2 / Triton ``inference.GRPCInferenceService`` that we serve.

Built in code from a descriptor (no protoc step, no generated modules to keep in sync with a
protobuf version), in a private descriptor pool so that tritonclient's own generated classes can
live in the same process. Field numbers are those of Triton's ``grpc_service.proto``; fields we do
not read (request parameters) are simply skipped by the parser.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_STR, _BOOL, _I64, _BYTES = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_BYTES
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

#: message -> [(field, number, type or message name, repeated)]
_MESSAGES: dict[str, list[tuple[str, int, Any, bool]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, _BOOL, False)],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, _BOOL, False)],
    "ModelReadyRequest": [("name", 1, _STR, False), ("version", 2, _STR, False)],
    "ModelReadyResponse": [("ready", 1, _BOOL, False)],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, _STR, False),
        ("version", 2, _STR, False),
        ("extensions", 3, _STR, True),
    ],
    "ModelMetadataRequest": [("name", 1, _STR, False), ("version", 2, _STR, False)],
    "TensorMetadata": [("name", 1, _STR, False), ("datatype", 2, _STR, False), ("shape", 3, _I64, True)],
    "ModelMetadataResponse": [
        ("name", 1, _STR, False),
        ("versions", 2, _STR, True),
        ("platform", 3, _STR, False),
        ("inputs", 4, ".inference.TensorMetadata", True),
        ("outputs", 5, ".inference.TensorMetadata", True),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, _BOOL, True),
        ("int_contents", 2, _F.TYPE_INT32, True),
        ("int64_contents", 3, _I64, True),
        ("uint_contents", 4, _F.TYPE_UINT32, True),
        ("uint64_contents", 5, _F.TYPE_UINT64, True),
        ("fp32_contents", 6, _F.TYPE_FLOAT, True),
        ("fp64_contents", 7, _F.TYPE_DOUBLE, True),
        ("bytes_contents", 8, _BYTES, True),
    ],
    "InferInputTensor": [
        ("name", 1, _STR, False),
        ("datatype", 2, _STR, False),
        ("shape", 3, _I64, True),
        ("contents", 5, ".inference.InferTensorContents", False),
    ],
    "InferRequestedOutputTensor": [("name", 1, _STR, False)],
    "ModelInferRequest": [
        ("model_name", 1, _STR, False),
        ("model_version", 2, _STR, False),
        ("id", 3, _STR, False),
        ("inputs", 5, ".inference.InferInputTensor", True),
        ("outputs", 6, ".inference.InferRequestedOutputTensor", True),
        ("raw_input_contents", 7, _BYTES, True),
    ],
    "InferOutputTensor": [
        ("name", 1, _STR, False),
        ("datatype", 2, _STR, False),
        ("shape", 3, _I64, True),
    ],
    "ModelInferResponse": [
        ("model_name", 1, _STR, False),
        ("model_version", 2, _STR, False),
        ("id", 3, _STR, False),
        ("outputs", 5, ".inference.InferOutputTensor", True),
        ("raw_output_contents", 6, _BYTES, True),
    ],
}

#: rpc -> (request message, response message)
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}
SERVICE = "inference.GRPCInferenceService"


def _build() -> dict[str, type]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="torchport/grpc_inference.proto", package="inference", syntax="proto3"
    )
    for name, spec in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        for field, number, kind, repeated in spec:
            f = msg.field.add(name=field, number=number, label=_REP if repeated else _OPT)
            if isinstance(kind, str):
                f.type, f.type_name = _F.TYPE_MESSAGE, kind
            else:
                f.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name in _MESSAGES
    }


MESSAGES = _build()
