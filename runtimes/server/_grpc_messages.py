"""The protobuf messages of the KServe v2 / Triton ``inference.GRPCInferenceService`` that we serve.

Built in code from a descriptor (no protoc step, no generated modules to keep in sync with a
protobuf version), in a private descriptor pool so that tritonclient's own generated classes can
live in the same process. Field numbers and enum values are those of Triton's ``grpc_service.proto``
and ``model_config.proto``; fields we do not read are skipped by the parser.
Field names match Triton's too, so the JSON forms the HTTP endpoints answer with convert to these
messages with ``json_format.ParseDict``. Triton's nested types (``ModelVersionPolicy.Latest``,
``ModelInstanceGroup.Kind``...) are top-level here: names do not travel on the wire.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_STR, _BOOL, _I64, _BYTES = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_BYTES
_I32, _U32, _U64 = _F.TYPE_INT32, _F.TYPE_UINT32, _F.TYPE_UINT64
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

#: enum -> values (in number order from 0)
_ENUMS: dict[str, list[str]] = {
    "DataType": [
        "TYPE_INVALID",
        "TYPE_BOOL",
        "TYPE_UINT8",
        "TYPE_UINT16",
        "TYPE_UINT32",
        "TYPE_UINT64",
        "TYPE_INT8",
        "TYPE_INT16",
        "TYPE_INT32",
        "TYPE_INT64",
        "TYPE_FP16",
        "TYPE_FP32",
        "TYPE_FP64",
        "TYPE_STRING",
        "TYPE_BF16",
    ],
    "InstanceGroupKind": ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"],
}


def _duration_stats(*names: str, first: int = 1) -> list[tuple[str, int, Any, bool]]:
    return [(n, first + i, "StatisticDuration", False) for i, n in enumerate(names)]


#: message -> [(field, number, type: a scalar type, a message or enum name, or ("map", value message)), repeated)]
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
        ("inputs", 4, "TensorMetadata", True),
        ("outputs", 5, "TensorMetadata", True),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, _BOOL, True),
        ("int_contents", 2, _I32, True),
        ("int64_contents", 3, _I64, True),
        ("uint_contents", 4, _U32, True),
        ("uint64_contents", 5, _U64, True),
        ("fp32_contents", 6, _F.TYPE_FLOAT, True),
        ("fp64_contents", 7, _F.TYPE_DOUBLE, True),
        ("bytes_contents", 8, _BYTES, True),
    ],
    "InferInputTensor": [
        ("name", 1, _STR, False),
        ("datatype", 2, _STR, False),
        ("shape", 3, _I64, True),
        ("contents", 5, "InferTensorContents", False),
    ],
    "InferRequestedOutputTensor": [("name", 1, _STR, False)],
    #: one request parameter (a oneof in Triton's proto: see _ONEOFS)
    "InferParameter": [
        ("bool_param", 1, _BOOL, False),
        ("int64_param", 2, _I64, False),
        ("string_param", 3, _STR, False),
        ("double_param", 4, _F.TYPE_DOUBLE, False),
        ("uint64_param", 5, _U64, False),
    ],
    "ModelInferRequest": [
        ("model_name", 1, _STR, False),
        ("model_version", 2, _STR, False),
        ("id", 3, _STR, False),
        ("parameters", 4, ("map", "InferParameter"), True),
        ("inputs", 5, "InferInputTensor", True),
        ("outputs", 6, "InferRequestedOutputTensor", True),
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
        ("outputs", 5, "InferOutputTensor", True),
        ("raw_output_contents", 6, _BYTES, True),
    ],
    # -- model configuration (model_config.proto: the fields torchport fills in) --
    "ModelConfigRequest": [("name", 1, _STR, False), ("version", 2, _STR, False)],
    "ModelConfigResponse": [("config", 1, "ModelConfig", False)],
    "ModelVersionPolicyLatest": [("num_versions", 1, _U32, False)],
    "ModelVersionPolicyAll": [],
    "ModelVersionPolicySpecific": [("versions", 1, _I64, True)],
    "ModelVersionPolicy": [
        ("latest", 1, "ModelVersionPolicyLatest", False),
        ("all", 2, "ModelVersionPolicyAll", False),
        ("specific", 3, "ModelVersionPolicySpecific", False),
    ],
    "ModelTensorReshape": [("shape", 1, _I64, True)],
    "ModelInput": [
        ("name", 1, _STR, False),
        ("data_type", 2, "DataType", False),
        ("dims", 4, _I64, True),
        ("reshape", 5, "ModelTensorReshape", False),
        ("optional", 8, _BOOL, False),
    ],
    "ModelOutput": [
        ("name", 1, _STR, False),
        ("data_type", 2, "DataType", False),
        ("dims", 3, _I64, True),
        ("reshape", 5, "ModelTensorReshape", False),
    ],
    "ModelInstanceGroup": [
        ("name", 1, _STR, False),
        ("count", 2, _I32, False),
        ("kind", 4, "InstanceGroupKind", False),
    ],
    "ModelDynamicBatching": [
        ("preferred_batch_size", 1, _I32, True),
        ("max_queue_delay_microseconds", 2, _U64, False),
    ],
    "ModelParameter": [("string_value", 1, _STR, False)],
    "ModelConfig": [
        ("name", 1, _STR, False),
        ("platform", 2, _STR, False),
        ("version_policy", 3, "ModelVersionPolicy", False),
        ("max_batch_size", 4, _I32, False),
        ("input", 5, "ModelInput", True),
        ("output", 6, "ModelOutput", True),
        ("instance_group", 7, "ModelInstanceGroup", True),
        ("dynamic_batching", 11, "ModelDynamicBatching", False),
        ("parameters", 14, ("map", "ModelParameter"), True),
        ("backend", 17, _STR, False),
    ],
    # -- statistics --
    "ModelStatisticsRequest": [("name", 1, _STR, False), ("version", 2, _STR, False)],
    "StatisticDuration": [("count", 1, _U64, False), ("ns", 2, _U64, False)],
    "InferStatistics": _duration_stats(
        "success",
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    ),
    "InferBatchStatistics": [
        ("batch_size", 1, _U64, False),
        *_duration_stats("compute_input", "compute_infer", "compute_output", first=2),
    ],
    "ModelStatistics": [
        ("name", 1, _STR, False),
        ("version", 2, _STR, False),
        ("last_inference", 3, _U64, False),
        ("inference_count", 4, _U64, False),
        ("execution_count", 5, _U64, False),
        ("inference_stats", 6, "InferStatistics", False),
        ("batch_stats", 7, "InferBatchStatistics", True),
    ],
    "ModelStatisticsResponse": [("model_stats", 1, "ModelStatistics", True)],
    # -- model repository --
    "RepositoryIndexRequest": [("repository_name", 1, _STR, False), ("ready", 2, _BOOL, False)],
    "ModelIndex": [
        ("name", 1, _STR, False),
        ("version", 2, _STR, False),
        ("state", 3, _STR, False),
        ("reason", 4, _STR, False),
    ],
    "RepositoryIndexResponse": [("models", 1, "ModelIndex", True)],
    "RepositoryModelLoadRequest": [("repository_name", 1, _STR, False), ("model_name", 2, _STR, False)],
    "RepositoryModelLoadResponse": [],
    "RepositoryModelUnloadRequest": [("repository_name", 1, _STR, False), ("model_name", 2, _STR, False)],
    "RepositoryModelUnloadResponse": [],
}

#: rpc -> (request message, response message)
METHODS = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ServerMetadata": ("ServerMetadataRequest", "ServerMetadataResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
    "ModelConfig": ("ModelConfigRequest", "ModelConfigResponse"),
    "ModelStatistics": ("ModelStatisticsRequest", "ModelStatisticsResponse"),
    "RepositoryIndex": ("RepositoryIndexRequest", "RepositoryIndexResponse"),
    "RepositoryModelLoad": ("RepositoryModelLoadRequest", "RepositoryModelLoadResponse"),
    "RepositoryModelUnload": ("RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse"),
}
SERVICE = "inference.GRPCInferenceService"


#: message -> the name of the oneof that holds all its fields
_ONEOFS = {"InferParameter": "parameter_choice"}


def _build() -> dict[str, Any]:  # message classes made at run time (their methods unknown statically)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="torchport/grpc_inference.proto", package="inference", syntax="proto3"
    )
    for name, values in _ENUMS.items():
        enum = fdp.enum_type.add(name=name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    for name, spec in _MESSAGES.items():
        msg = fdp.message_type.add(name=name)
        if name in _ONEOFS:
            msg.oneof_decl.add(name=_ONEOFS[name])
        for field, number, kind, repeated in spec:
            f = msg.field.add(name=field, number=number, label=_REP if repeated else _OPT)
            if name in _ONEOFS:
                f.oneof_index = 0
            if isinstance(kind, tuple):  # map<string, message>: a nested entry type (as protoc makes it)
                entry_name = "".join(p.capitalize() for p in field.split("_")) + "Entry"
                entry = msg.nested_type.add(name=entry_name)
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=_OPT, type=_STR)
                entry.field.add(
                    name="value",
                    number=2,
                    label=_OPT,
                    type=_F.TYPE_MESSAGE,
                    type_name=f".inference.{kind[1]}",
                )
                f.type, f.type_name = _F.TYPE_MESSAGE, f".inference.{name}.{entry_name}"
            elif isinstance(kind, str):
                f.type = _F.TYPE_ENUM if kind in _ENUMS else _F.TYPE_MESSAGE
                f.type_name = f".inference.{kind}"
            else:
                f.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"inference.{name}"))
        for name in _MESSAGES
    }


MESSAGES = _build()
