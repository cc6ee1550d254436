"""The Open Inference Protocol v2 server (no torch).

Example:
    >>> from torchport.runtimes.server import InferenceServer, ServerConfig
    >>> InferenceServer("out/cnn", ServerConfig(port=8000)).run()      # doctest: +SKIP
"""

from torchport.runtimes.server._auth import ApiKeyAuth
from torchport.runtimes.server._batching import ModelRunner
from torchport.runtimes.server._config import ModelSettings, ServerConfig, VersionPolicy
from torchport.runtimes.server._metrics import ServerMetrics
from torchport.runtimes.server._protocol import (
    HTTPError,
    InferRequest,
    decode_infer_request,
    encode_infer_response,
)
from torchport.runtimes.server._repository import ModelEntry, ModelRepository, discover
from torchport.runtimes.server._server import InferenceServer, serve

__all__ = [
    "ApiKeyAuth",
    "HTTPError",
    "InferRequest",
    "InferenceServer",
    "ModelEntry",
    "ModelRepository",
    "ModelRunner",
    "ModelSettings",
    "ServerConfig",
    "ServerMetrics",
    "VersionPolicy",
    "decode_infer_request",
    "discover",
    "encode_infer_response",
    "serve",
]
