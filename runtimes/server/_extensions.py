"""Triton's HTTP extensions beyond the core protocol: model configuration, statistics, and the
model repository's load/unload (model control).

Each handler takes the :class:`~torchport.runtimes.server._routes.InferenceApp` and returns a
Response or a Deferred; deliberate errors are :class:`HTTPError`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from torchport.runtimes._errors import TorchportError
from torchport.runtimes._providers import GPU_PROVIDERS
from torchport.runtimes.server._http import Deferred, Response
from torchport.runtimes.server._protocol import HTTPError, json_dumps
from torchport.runtimes.server._repository import ModelEntry

#: the InferenceApp of _routes (not imported: _routes imports this module)
InferenceApp = Any

EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "statistics"]


def _triton_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _config_tensor(tensor: dict[str, Any], batched: bool) -> dict[str, Any]:
    """A metadata tensor (``name``, ``datatype``, ``shape``) as a config input/output."""
    dims = list(tensor["shape"][1:] if batched else tensor["shape"])
    out: dict[str, Any] = {"name": tensor["name"], "data_type": _triton_type(tensor["datatype"])}
    if batched and not dims:  # only the batch dim: Triton writes [1] reshaped to []
        out.update(dims=[1], reshape={"shape": []})
    else:
        out["dims"] = dims
    if tensor.get("optional"):
        out["optional"] = True
    return out


def model_config(entry: ModelEntry) -> dict[str, Any]:
    """Triton's model configuration (the JSON form of config.pbtxt) of a loaded version.

    With dynamic batching, ``max_batch_size`` > 0 and ``dims`` leave out the batch dim, as in Triton;
    a tensor of the batch dim alone is ``dims: [1]`` with ``reshape: {shape: []}`` (Triton's form).
    A text model (see :mod:`~torchport.runtimes.server._text_infer`) also lists its BYTES ``text``
    input and the outputs the server adds, as model metadata does; ``text`` and the token inputs are
    then ``optional`` (a request gives one or the other).
    """
    sess, runner = entry.session, entry.runner
    assert sess is not None and runner is not None
    batched = runner.batching
    ins, outs = entry.tensors()
    if entry.text is not None:
        ins = [{**t, "optional": True} for t in ins]
    inputs = [_config_tensor(t, batched) for t in ins]
    outputs = [_config_tensor(t, batched) for t in outs]

    st = entry.settings
    gpu = sess.provider in GPU_PROVIDERS
    config: dict[str, Any] = {
        "name": entry.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": st.version_policy.to_triton(),
        "max_batch_size": runner.max_batch_size if batched else 0,
        "input": inputs,
        "output": outputs,
        "instance_group": [
            {"name": entry.name, "kind": "KIND_GPU" if gpu else "KIND_CPU", "count": runner.workers}
        ],
        "parameters": {
            "variant": {"string_value": sess.variant},
            "provider": {"string_value": sess.provider},
            "intra_op_thread_count": {"string_value": str(st.intra_op_threads or 0)},
        },
    }
    if batched:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(round(runner.max_queue_delay * 1e6)),
            "preferred_batch_size": [],
        }
    return config


def config_response(app: InferenceApp, name: str, version: str | None) -> Response:
    entry = app.model_entry(name, version, need_ready=True)
    return Response(200, json_dumps(model_config(entry)))


def stats_response(app: InferenceApp, name: str | None, version: str | None) -> Response:
    """``{"model_stats": [...]}`` for one model (one or every version) or for every model."""
    return Response(200, json_dumps(model_stats(app, name, version)))


def model_stats(app: InferenceApp, name: str | None, version: str | None) -> dict[str, Any]:
    """Triton's statistics JSON: one model (one or every version), or every model (``name`` None)."""
    repo = app.repository
    if name is None:
        entries = sorted(repo.entries, key=lambda e: (e.name, e.version))
    elif version is not None:
        entries = [app.model_entry(name, version, need_ready=False)]
    else:
        app.model_entry(name, None, need_ready=False)  # 404 for an unknown model
        entries = [e for e in repo.entries if e.name == name]
    return {"model_stats": [e.stats.to_triton(e.name, e.version) for e in entries]}


def repository_action(app: InferenceApp, name: str, action: str) -> Deferred:
    """``POST /v2/repository/models/{name}/load|unload``: answered when the (un)load is done."""
    task = start_repository_action(app, name, action)

    def finish(fut: asyncio.Future) -> Response:
        exc = fut.exception()
        if isinstance(exc, TorchportError):
            return app.error_response(400, str(exc))
        if exc is not None:
            raise exc
        return Response(200, b"")

    return Deferred(task, finish)


def start_repository_action(app: InferenceApp, name: str, action: str) -> asyncio.Future:
    """Start loading or unloading ``name``; the future fails with a TorchportError when that fails.

    Raises:
        HTTPError: model control is off, or the folder decides (poll).
    """
    control = app.control
    if control is None:
        raise HTTPError(
            400,
            "model control is off: start the server with --model-control explicit to load and unload models",
        )
    if app.model_control == "poll":
        raise HTTPError(
            400, f"cannot {action} {name!r} with --model-control poll: the folder decides what is served"
        )
    return asyncio.ensure_future(control.load(name) if action == "load" else control.unload(name))
