"""Loading a model from what the user points at.

Sources (``load_model(source)``):

- ``path/to/file.py:factory_or_class`` — the file is imported (its folder on ``sys.path`` while it
  imports); the attribute is a factory function or an ``nn.Module`` subclass called with no
  arguments, or an ``nn.Module`` instance.
- ``package.module:attr`` — an importable module (the current directory is on ``sys.path`` too);
  the attribute as above. ``attr`` may be dotted (``Class.build``).
- ``model.pt`` / ``model.ts`` / ``model.pth`` — a TorchScript archive (:func:`torch.jit.load`).
  A pickled whole module (``torch.save(model)``) is refused: it can run arbitrary code.
- ``model.pt2`` — an ExportedProgram (:func:`torch.export.load`). An archive whose loading would
  run code (pickled constants, compiled code, shape expressions that are not arithmetic) is refused.
- ``path/to/folder`` — a local Hugging Face model folder (``save_pretrained`` output, with
  ``config.json``); the class comes from ``config.architectures``; never the hub.
  ``path/to/folder:encoder`` loads the model and keeps ``model.get_encoder()`` (Whisper's or T5's
  encoder, for example).

Example inputs found next to the model (an ``example_inputs()`` function and a ``DYNAMIC_DIMS`` dict
in the factory's module, or the Hugging Face config) are attached to the result.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from torchport.exporters._example_inputs import ExampleInputs
from torchport.exporters._hf import load_hf_folder
from torchport.exporters._loaded_model import LoadedModel
from torchport.exporters._untrusted import is_refused_pickle, load_untrusted_pt2
from torchport.exporters._user_examples import example_from_object
from torchport.runtimes._errors import LoadError, TorchportError, describe_error
from torchport.runtimes._manifest import DimRange
from torchport.runtimes._package import sha256_file

__all__ = ["LoadedModel", "absolute_reference", "load_model"]

TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth", ".jit", ".ptl")
EXPORTED_PROGRAM_SUFFIXES = (".pt2",)
HF_COMPONENTS = ("encoder",)

_SOURCE_FORMS = (
    "path/to/file.py:factory, package.module:attr, model.pt (TorchScript), model.pt2 (ExportedProgram) "
    "or a Hugging Face model folder"
)


# --------------------------------------------------------------------------- helpers


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)


def _candidates(module: types.ModuleType) -> list[str]:
    """Attributes of ``module`` that could be a model source: nn.Module classes/instances and functions defined there."""
    names = []
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if isinstance(value, torch.nn.Module):
            names.append(name)
        elif isinstance(value, type) and issubclass(value, torch.nn.Module):
            if value.__module__ == module.__name__:
                names.append(name)
        elif inspect.isfunction(value) and value.__module__ == module.__name__:
            if name not in ("example_inputs",):
                names.append(name)
    return sorted(names)


def _resolve_attr(module: types.ModuleType, attr: str, where: str) -> Any:
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            scope = module if i == 0 else obj
            pool = (
                _candidates(scope)
                if isinstance(scope, types.ModuleType)
                else [n for n in dir(scope) if not n.startswith("_")]
            )
            close = difflib.get_close_matches(
                part, pool or [n for n in dir(scope) if not n.startswith("_")], n=3
            )
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else f"available: {', '.join(pool) if pool else '(no nn.Module classes, instances or functions)'}"
            )
            raise LoadError(f"{where} has no attribute {'.'.join(attr.split('.')[: i + 1])!r}; {hint}")
        obj = getattr(obj, part)
    return obj


def _instantiate(obj: Any, attr: str, where: str) -> torch.nn.Module:
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise LoadError(
            f"{attr} in {where} is a {type(obj).__name__}, not an nn.Module, an nn.Module class or a factory function"
        )
    what = "class" if isinstance(obj, type) else "factory"
    try:
        result = obj()
    except TorchportError:
        raise
    except SystemExit as e:
        raise LoadError(f"{what} {attr} in {where} called sys.exit({e.code!r})") from e
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        raise LoadError(f"{what} {attr} in {where} raised {describe_error(e)}") from e
    if not isinstance(result, torch.nn.Module):
        raise LoadError(
            f"{what} {attr} in {where} returned a {type(result).__module__}.{type(result).__qualname__}, "
            "not a torch.nn.Module; return the model instance"
        )
    return result


def _eval(module: torch.nn.Module) -> torch.nn.Module:
    module.eval()
    return module


def _examples_next_to(
    module: types.ModuleType, signature: inspect.Signature | None, where: str
) -> tuple[ExampleInputs | None, dict | None]:
    """``example_inputs()`` and ``DYNAMIC_DIMS`` from the factory's module, if defined."""
    decl = getattr(module, "DYNAMIC_DIMS", None)
    if decl is not None and not isinstance(decl, dict):
        raise LoadError(f"DYNAMIC_DIMS in {where} must be a dict {{param: {{axis: (name, min, max)}}}}")
    fn = getattr(module, "example_inputs", None)
    if fn is None:
        return None, decl
    try:
        value = fn() if callable(fn) else fn
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"example_inputs() in {where} raised {describe_error(e)}") from e
    try:
        ex = example_from_object(
            value, signature=signature, dynamic=decl, origin=f"example_inputs() in {where}"
        )
    except TorchportError as e:
        raise LoadError(str(e)) from e
    return ex, decl


# --------------------------------------------------------------------------- loaders


def _import_file(path: Path, source: str) -> types.ModuleType:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    mod_name = f"torchport_user_{path.stem if path.stem.isidentifier() else 'model'}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        with _on_sys_path(str(path.resolve().parent)):
            spec.loader.exec_module(module)
    except SystemExit as e:
        sys.modules.pop(mod_name, None)
        raise LoadError(
            f"importing {path} called sys.exit({e.code!r}); put script code under if __name__ == '__main__':"
        ) from e
    except Exception as e:  # noqa: BLE001 - the user's file may raise anything
        sys.modules.pop(mod_name, None)
        raise LoadError(f"importing {path} failed: {describe_error(e)}") from e
    return module


def _from_python(
    module: types.ModuleType, attr: str, where: str, kind: str, source: str, sha: str | None
) -> LoadedModel:
    if not attr:
        cands = _candidates(module)
        raise LoadError(
            f"name the model in {source!r}: add :<factory or class>"
            + (f"; candidates in {where}: {', '.join(cands)}" if cands else "")
        )
    obj = _resolve_attr(module, attr, where)
    model = _eval(_instantiate(obj, attr, where))
    signature = _signature(model.forward)
    examples, decl = _examples_next_to(module, signature, where)
    return LoadedModel(
        module=model,
        kind=kind,
        reference=source,
        sha256=sha,
        example_inputs=examples,
        forward_signature=signature,
        dynamic_dims_decl=decl,
        example_source="example_inputs()" if examples is not None else None,
    )


def _load_python_file(path_text: str, attr: str, source: str) -> LoadedModel:
    path = Path(path_text)
    if not path.is_file():
        raise LoadError(f"model file not found: {path_text}")
    module = _import_file(path, source)
    return _from_python(module, attr, path_text, "python_file", source, sha256_file(path))


def _load_python_module(mod_name: str, attr: str, source: str) -> LoadedModel:
    if not all(part.isidentifier() for part in mod_name.split(".")):
        raise LoadError(
            f"malformed model source {source!r}: {mod_name!r} is not a module name; use {_SOURCE_FORMS}"
        )
    try:
        with _on_sys_path(os.getcwd()):
            module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        missing = getattr(e, "name", None) or mod_name
        raise LoadError(
            f"cannot import module {mod_name!r}: no module named {missing!r}; is it installed or on "
            f"PYTHONPATH? (for a file, write path/to/file.py:{attr or 'factory'})"
        ) from e
    except SystemExit as e:
        raise LoadError(
            f"importing module {mod_name!r} called sys.exit({e.code!r}); put script code under "
            "if __name__ == '__main__':"
        ) from e
    except Exception as e:  # noqa: BLE001
        raise LoadError(f"importing module {mod_name!r} failed: {describe_error(e)}") from e
    sha = None
    file = getattr(module, "__file__", None)
    if file and os.path.isfile(file):
        sha = sha256_file(Path(file))
    return _from_python(module, attr, f"module {mod_name}", "python_module", source, sha)


def _refuse_pickle(path: Path, reason: BaseException) -> LoadError:
    """The error for a .pt that is not TorchScript: tell what it is, and refuse pickled code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        if (
            isinstance(e, __import__("pickle").UnpicklingError)
            or "weights_only" in str(e).lower()
            or "Weights only" in str(e)
        ):
            return LoadError(
                f"{path} is a pickled Python object (torch.save of a whole model?), not TorchScript; torchport "
                "loads weights with weights_only=True and refuses untrusted pickles: save it with "
                "torch.jit.save(torch.jit.script(model)) or torch.export.save, or point at the code that builds "
                "it (file.py:factory)"
            )
        return LoadError(f"cannot load {path} as TorchScript: {describe_error(reason)}")
    if isinstance(obj, dict):
        return LoadError(
            f"{path} holds only weights (a state dict), not a model; load them in a factory "
            "(model.load_state_dict(torch.load(path, weights_only=True))) and pass file.py:factory"
        )
    return LoadError(
        f"{path} holds a {type(obj).__name__}, not a TorchScript model: {describe_error(reason)}"
    )


def _torchscript_signature(module: Any) -> inspect.Signature | None:
    sig = _signature(module.forward)
    if sig is not None and sig.parameters:
        return sig
    try:
        arguments = module.forward.schema.arguments[1:]  # drop self
    except (AttributeError, RuntimeError):
        return sig
    params = [inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in arguments]
    return inspect.Signature(params)


def _load_torchscript(path: Path, source: str) -> LoadedModel:
    if not path.is_file():
        raise LoadError(f"model file not found: {source}")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise _refuse_pickle(path, e) from e
    module.eval()
    return LoadedModel(
        module=module,
        kind="torchscript",
        reference=source,
        sha256=sha256_file(path),
        forward_signature=_torchscript_signature(module),
    )


def _load_exported_program(path: Path, source: str) -> LoadedModel:
    if not path.is_file():
        raise LoadError(f"model file not found: {source}")
    try:
        ep = load_untrusted_pt2(path, source)
    except LoadError:
        raise
    except Exception as e:  # noqa: BLE001
        if is_refused_pickle(e):
            raise LoadError(
                f"{source} holds pickled Python objects beyond tensors; torchport loads with "
                "weights_only=True and refuses untrusted pickles: re-save it with torch.export.save from "
                "a program whose inputs, weights and constants are plain tensors"
            ) from e
        raise LoadError(
            f"cannot load {source} as an ExportedProgram (torch.export.save output): {describe_error(e)}"
        ) from e
    module = None
    with contextlib.suppress(Exception):
        module = ep.module()
    signature = _signature(module.forward) if module is not None else None
    examples = None
    if ep.example_inputs is not None:
        # best effort: a program whose example inputs cannot be described still loads
        with contextlib.suppress(Exception):
            examples = _examples_from_program(ep, signature)
    return LoadedModel(
        module=module,
        kind="exported_program",
        reference=source,
        sha256=sha256_file(path),
        exported_program=ep,
        forward_signature=signature,
        example_inputs=examples,
        example_source="pt2" if examples is not None else None,
    )


#: upper bound used for a program's dynamic dim that torch.export left unbounded
UNBOUNDED_DIM_MAX = 64


def _bound(value: Any) -> int | None:
    """An int bound of a torch ValueRanges end, or None when it is infinite."""
    if value is None:
        return None
    if getattr(value, "is_integer", None) is False or getattr(value, "is_finite", True) is not True:
        return None
    try:
        out = int(value)
    except Exception:  # noqa: BLE001 - sympy infinities raise various errors
        return None
    return out if abs(out) < 2**62 else None


def _examples_from_program(ep: Any, signature: inspect.Signature | None) -> ExampleInputs:
    """ExampleInputs from a program's saved example inputs, with its dynamic dims and their ranges.

    torch.export does not keep the user's dim names; a symbol only ever used as axis 0 is named
    ``batch``, the others ``dim1``, ``dim2``... An unbounded max becomes :data:`UNBOUNDED_DIM_MAX`
    and a min of 0 becomes 1.
    """
    args, kwargs = ep.example_inputs
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    user_names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    ex = ExampleInputs.from_tensors(tuple(args), dict(kwargs), signature=signature)
    tensor_users = [
        n for n in user_names if n in placeholders and hasattr(placeholders[n].meta.get("val"), "shape")
    ]
    if len(tensor_users) != len(ex.input_names):
        return ex
    uses: dict[Any, list[tuple[str, int]]] = {}
    for leaf, ph in zip(ex.input_names, tensor_users, strict=True):
        for axis, size in enumerate(placeholders[ph].meta["val"].shape):
            if isinstance(size, torch.SymInt):
                expr = size.node.expr
                if not getattr(expr, "is_Symbol", False):
                    return ex  # a derived dim (2*s0...): keep the inputs static rather than guess
                uses.setdefault(expr, []).append((leaf, axis))
    names: dict[Any, str] = {}
    batch_taken = False
    for k, (expr, where) in enumerate(uses.items(), start=1):
        if not batch_taken and all(axis == 0 for _, axis in where):
            names[expr], batch_taken = "batch", True
        else:
            names[expr] = f"dim{k}"
    dynamic: dict[str, dict[int, str]] = {}
    ranges: dict[str, DimRange] = {}
    for expr, where in uses.items():
        vr = ep.range_constraints.get(expr)
        low = _bound(vr.lower if vr is not None else None)
        low = 1 if low is None else max(low, 1)  # torch's default min is 0; an empty input is rarely meant
        high = _bound(vr.upper if vr is not None else None)
        high = max(low, UNBOUNDED_DIM_MAX) if high is None else high
        ranges[names[expr]] = DimRange(low, high)
        for leaf, axis in where:
            dynamic.setdefault(leaf, {})[axis] = names[expr]
    return ExampleInputs.from_tensors(
        tuple(args), dict(kwargs), signature=signature, dynamic=dynamic, dims=ranges
    )


# --------------------------------------------------------------------------- entry point


def _split(source: str) -> tuple[str, str | None]:
    """``"left:attr"`` → (left, attr); no colon → (source, None). Windows drive letters are kept."""
    if ":" not in source:
        return source, None
    left, _, attr = source.rpartition(":")
    if len(left) == 1 and left.isalpha() and attr[:1] in ("\\", "/"):  # C:\model.pt
        return source, None
    return left, attr


def absolute_reference(source: str) -> str:
    """``source`` with its file or folder part made absolute (``models/net.py:make`` →
    ``/home/me/models/net.py:make``), so the manifest's reference works from any folder; an
    importable ``package.module:attr`` stays as it is.

    Example:
        >>> absolute_reference("torchport.exporters.examples.cnn:make_model")
        'torchport.exporters.examples.cnn:make_model'
    """
    left, attr = _split(source.strip())
    path = os.path.expanduser(left)
    if not os.path.exists(path):
        return source.strip()
    absolute = os.path.abspath(path)
    return absolute if attr is None else f"{absolute}:{attr}"


def load_model(source: str, attn_implementation: str | None = None) -> LoadedModel:
    """Load a model from a source string (see the module docstring for the forms).

    Args:
        source: ``file.py:factory``, ``package.module:attr``, ``model.pt``/``.ts`` (TorchScript),
            ``model.pt2`` (ExportedProgram), a Hugging Face folder, or ``folder:encoder``.
        attn_implementation: for Hugging Face models, ``"sdpa"`` (default) or ``"eager"``.

    Returns:
        A :class:`LoadedModel` with the module in eval mode.

    Raises:
        LoadError: one line saying what is wrong: missing file, missing attribute (with close
            matches), a factory that raised, a result that is not an nn.Module, a module that cannot
            be imported, a refused pickle, or a malformed source string.

    Example:
        >>> loaded = load_model("torchport.exporters.examples.mlp:make_model")
        >>> loaded.kind, loaded.module.training
        ('python_module', False)
    """
    if not isinstance(source, str) or not source.strip():
        raise LoadError(f"empty model source; use {_SOURCE_FORMS}")
    source_text = source.strip()
    left, attr = _split(source_text)
    left = os.path.expanduser(left)
    if attr is not None and not left:
        raise LoadError(f"malformed model source {source!r}: nothing before ':'; use {_SOURCE_FORMS}")

    # Hugging Face folder (optionally folder:component)
    if attr is None and os.path.isdir(left) or attr is not None and os.path.isdir(left):
        if attr is not None and not os.path.isfile(os.path.join(left, "config.json")):
            raise LoadError(
                f"{left} is a folder, not a .py file or a Hugging Face model folder (no config.json); "
                f"use path/to/file.py:{attr}"
            )
        if attr is not None and attr not in HF_COMPONENTS:
            raise LoadError(
                f"unknown part {attr!r} in {source!r}: a Hugging Face folder takes no suffix, or one of: "
                f"{', '.join(HF_COMPONENTS)}"
            )
        return load_hf_folder(
            Path(left), source_text, component=attr, attn_implementation=attn_implementation
        )

    lower = left.lower()
    if attr is None:
        if lower.endswith(EXPORTED_PROGRAM_SUFFIXES):
            return _load_exported_program(Path(left), source_text)
        if lower.endswith(TORCHSCRIPT_SUFFIXES):
            return _load_torchscript(Path(left), source_text)
        if lower.endswith(".py"):
            if not os.path.isfile(left):
                raise LoadError(f"model file not found: {left}")
            module = _import_file(Path(left), source_text)
            return _from_python(module, "", left, "python_file", source_text, None)
        if os.path.exists(left):
            raise LoadError(
                f"cannot tell what kind of model {source!r} is from its name; use {_SOURCE_FORMS}"
            )
        if "." in left and all(part.isidentifier() for part in left.split(".")):
            imported: types.ModuleType | None = None
            with contextlib.suppress(Exception), _on_sys_path(os.getcwd()):
                imported = importlib.import_module(left)
            if (
                imported is not None
            ):  # an importable module without :attr: say which attributes could be meant
                return _from_python(imported, "", f"module {left}", "python_module", source_text, None)
        raise LoadError(f"model source {source!r} is not a file, folder or module:attr; use {_SOURCE_FORMS}")

    if not attr:
        raise LoadError(f"malformed model source {source!r}: nothing after ':'; name the factory or class")
    if not all(part.isidentifier() for part in attr.split(".")):
        raise LoadError(f"malformed model source {source!r}: {attr!r} is not an attribute name")
    if lower.endswith(".py") or "/" in left or os.sep in left:
        if not lower.endswith(".py") and os.path.exists(left):
            raise LoadError(f"malformed model source {source!r}: {left} is not a .py file")
        return _load_python_file(left, attr, source_text)
    return _load_python_module(left, attr, source_text)
