"""Reading model files that may come from anyone, without running code hidden in them.

``torch.export.load`` trusts its archive: it unpickles constants named ``opaque_obj_*`` with plain
``pickle.loads``, loads entries marked ``use_pickle`` with ``torch.load(weights_only=False)``,
rebuilds ``custom_obj_*`` script objects, loads AOTInductor shared libraries found under
``data/aotinductor/``, and turns every symbolic-shape expression in the program with
``sympy.sympify``, which evaluates its text as Python; a pytree spec's defaultdict makes it import
any module by name. Any of these runs code from the file.

:func:`check_pt2_archive` reads the zip before torch does and refuses such an archive with a
message naming the entry; :func:`untrusted_pt2_load` is the second wall: while torch loads, every
unpickling path above is blocked and expressions are parsed by a strict grammar first.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import json
import pickle
import re
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchport.runtimes._errors import LoadError

__all__ = [
    "UnsafeContentError",
    "check_pt2_archive",
    "check_sympy_expression",
    "is_refused_pickle",
    "load_untrusted_pt2",
    "untrusted_pt2_load",
]

_PICKLED_PREFIXES = ("opaque_obj_", "custom_obj_")
_AOTI_DIR = "data/aotinductor/"
_CONFIG_DIRS = ("data/constants/", "data/weights/")

#: sympy callables a serialized shape expression may use (besides torch's own, passed as locals)
_SYMPY_CALLABLES = frozenset(
    {
        "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs",
        "floor", "ceiling", "sqrt", "sign", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality",
        "Unequality", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or",
        "Not", "Xor", "Piecewise", "ExprCondPair",
    }
)  # fmt: skip
#: torch.utils._sympy.functions (the names torch's deserializer passes to sympify as locals)
_TORCH_SYMPY_FUNCTIONS = frozenset(
    {
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
        "FloorToInt", "CeilDiv", "IntTrueDiv", "FloatTrueDiv", "LShift", "RShift",
        "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
        "RoundDecimal", "ToFloat", "FloatPow", "PowByNatural", "Identity",
    }
)  # fmt: skip
_SYMPY_CONSTANTS = frozenset({"oo", "zoo", "nan", "true", "false", "S"})
#: assumptions ``Symbol(name, positive=True, integer=True)`` may carry
_ASSUMPTIONS = frozenset(
    {
        "integer", "positive", "negative", "nonnegative", "nonpositive", "real", "finite",
        "infinite", "zero", "nonzero", "even", "odd", "rational", "extended_real", "commutative",
    }
)  # fmt: skip
_STRING_ARGS = {  # a string constant is allowed only as the first argument of these, in this form
    "Symbol": re.compile(r"[A-Za-z_][A-Za-z0-9_]*"),
    "Integer": re.compile(r"[-+]?[0-9]+"),
    "Float": re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?"),
    "Rational": re.compile(r"[-+]?[0-9]+(/[0-9]+)?"),
}
#: defaultdict factories a pytree spec may name (torch imports module and takes the attribute)
_DEFAULT_FACTORIES = frozenset(
    [
        ("builtins", n)
        for n in ("list", "dict", "set", "int", "float", "str", "tuple", "bool", "bytes", "frozenset")
    ]
    + [("collections", n) for n in ("OrderedDict", "Counter", "deque", "defaultdict")]
)
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+")  # torch's shape symbols: s0, u3, zf1...
_MAX_EXPRESSION = 20_000
_OPERATORS = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub, ast.UAdd,
    ast.Not, ast.Invert, ast.BitAnd, ast.BitOr, ast.BitXor, ast.And, ast.Or, ast.Eq, ast.NotEq,
    ast.Lt, ast.LtE, ast.Gt, ast.GtE,
)  # fmt: skip


class UnsafeContentError(LoadError):
    """A model file holds content that would run code when read (a pickle, a compiled library, an
    expression that is not plain arithmetic); it was refused before anything ran."""


def check_sympy_expression(text: str, known: frozenset[str] | set[str] = frozenset()) -> None:
    """Refuse a shape expression that is not plain sympy arithmetic over shape symbols.

    Args:
        text: the expression as stored in the archive (``"2*s0"``,
            ``"Symbol('s0', positive=True, integer=True)"``, ``"Max(1, s0)"``...).
        known: names the caller defines (torch's sympy functions and known symbols).

    Raises:
        ValueError: naming what is not allowed (an attribute, a call of ``open``, a string...).
    """
    if not isinstance(text, str):
        raise ValueError(f"expected text, got {type(text).__name__}")
    if len(text) > _MAX_EXPRESSION:
        raise ValueError(f"expression of {len(text)} characters (at most {_MAX_EXPRESSION})")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"not an expression ({type(e).__name__})") from None
    try:
        _check_node(tree.body, known)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None


def _check_node(node: ast.AST, known: frozenset[str] | set[str]) -> None:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (bool, int, float)) or node.value is None:
            return
        raise ValueError(f"constant {node.value!r:.40} is not a number")
    if isinstance(node, ast.Name):
        name = node.id
        if name in known or name in _SYMPY_CONSTANTS or name in _SYMPY_CALLABLES:
            return
        if _SYMBOL_NAME.fullmatch(name) and not hasattr(builtins, name):
            return
        raise ValueError(f"name {name!r} is not a shape symbol or an allowed sympy function")
    if isinstance(node, ast.Call):
        func = node.func
        if not isinstance(func, ast.Name) or not (
            func.id in _SYMPY_CALLABLES or func.id in _TORCH_SYMPY_FUNCTIONS or func.id in known
        ):
            what = func.id if isinstance(func, ast.Name) else ast.dump(func)[:40]
            raise ValueError(f"call of {what!r} is not an allowed sympy function")
        for i, arg in enumerate(node.args):
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                pattern = _STRING_ARGS.get(func.id)
                if i != 0 or pattern is None or not pattern.fullmatch(arg.value):
                    raise ValueError(f"string {arg.value!r:.40} is not allowed as argument {i} of {func.id}")
                continue
            _check_node(arg, known)
        for kw in node.keywords:
            value = kw.value.value if isinstance(kw.value, ast.Constant) else None
            if not (
                (kw.arg in _ASSUMPTIONS and isinstance(value, bool))
                or (kw.arg == "precision" and type(value) is int)
            ):
                raise ValueError(f"keyword {kw.arg!r} of {func.id} is not a sympy assumption")
        return
    if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare)):
        ops = [node.op] if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp)) else list(node.ops)
        for op in ops:
            if not isinstance(op, _OPERATORS):
                raise ValueError(f"operator {type(op).__name__} is not allowed")
        children: list[ast.AST]
        if isinstance(node, ast.BinOp):
            children = [node.left, node.right]
        elif isinstance(node, ast.UnaryOp):
            children = [node.operand]
        elif isinstance(node, ast.BoolOp):
            children = list(node.values)
        else:
            children = [node.left, *node.comparators]
        for child in children:
            _check_node(child, known)
        return
    if isinstance(node, ast.Tuple):  # Piecewise((value, condition), ...)
        for item in node.elts:
            _check_node(item, known)
        return
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "S":
        if node.attr in (
            "true",
            "false",
            "Zero",
            "One",
            "NegativeOne",
            "Half",
            "Infinity",
            "NegativeInfinity",
        ):
            return
    raise ValueError(f"{type(node).__name__} is not allowed in a shape expression")


# --------------------------------------------------------------------------- archive inspection


def _refuse(source: str, entry: str, what: str) -> UnsafeContentError:
    return UnsafeContentError(
        f"refusing {source}: entry {entry} {what}; torchport does not run code from model files: "
        "re-save the program with torch.export.save from a model whose weights and constants are plain tensors"
    )


def _strings(value: Any, depth: int = 0) -> Iterator[tuple[str | None, str]]:
    """Every (key, string) in a serialized program (key ``None`` for an array item)."""
    if depth > 400:
        raise ValueError("nested more than 400 levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                yield key, item
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                yield None, item
            yield from _strings(item, depth + 1)


def _check_default_factory(value: Any) -> None:
    """A pytree spec's defaultdict names its factory by module and name; torch imports it."""
    if isinstance(value, dict) and "default_factory_module" in value:
        module, name = value.get("default_factory_module"), value.get("default_factory_name")
        if (module, name) not in _DEFAULT_FACTORIES:
            raise ValueError(f"a defaultdict factory {module}.{name} torch would import")


def check_pt2_archive(path: Path, source: str) -> None:
    """Refuse a ``.pt2`` whose loading would run code, before torch reads it.

    Refused: ``opaque_obj_*`` / ``custom_obj_*`` entries (pickled Python or script objects), a
    weight or constant marked ``use_pickle``, compiled AOTInductor code, and a shape expression
    that is not plain arithmetic (torch evaluates them with ``sympy.sympify``). A file that is not
    a zip is left to torch, which refuses it with its own error.

    Raises:
        UnsafeContentError: naming the archive entry (and the weight or constant) refused.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return
    with archive:
        names = archive.namelist()
        for name in names:
            inner = name.split("/", 1)[1] if "/" in name else name
            base = inner.rsplit("/", 1)[-1]
            if inner.startswith(_AOTI_DIR):
                raise _refuse(
                    source, name, "is compiled AOTInductor code (a shared library torch would load)"
                )
            if inner.startswith("data/constants/") and base.startswith(_PICKLED_PREFIXES):
                raise _refuse(source, name, "is a pickled Python object (torch would unpickle it)")
        for name in names:
            inner = name.split("/", 1)[1] if "/" in name else name
            if inner.startswith(_CONFIG_DIRS) and inner.endswith("_config.json"):
                _check_payload_config(archive, name, source)
            elif inner.endswith(".json"):  # models/*.json, or a legacy serialized_exported_program.json
                _check_program(archive, name, source)


def _read_json(archive: zipfile.ZipFile, name: str, source: str) -> Any:
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError) as e:
        raise UnsafeContentError(
            f"refusing {source}: entry {name} is not valid JSON ({type(e).__name__})"
        ) from e


def _check_payload_config(archive: zipfile.ZipFile, name: str, source: str) -> None:
    config = _read_json(archive, name, source)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise UnsafeContentError(f"refusing {source}: entry {name} has no 'config' mapping")
    folder = name.rsplit("/", 1)[0]
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise UnsafeContentError(f"refusing {source}: entry {name}: {fqn!r} is not an object")
        path_name = str(meta.get("path_name", ""))
        where = f"{folder}/{path_name} ({fqn!r} in {name.rsplit('/', 1)[-1]})"
        if meta.get("use_pickle"):
            raise _refuse(source, where, "is marked use_pickle (torch would unpickle it)")
        if path_name.startswith(_PICKLED_PREFIXES):
            raise _refuse(source, where, "is a pickled Python object (torch would unpickle it)")


def _check_program(archive: zipfile.ZipFile, name: str, source: str) -> None:
    program = _read_json(archive, name, source)
    try:
        for key, text in _strings(program):
            if key == "expr_str":
                try:
                    check_sympy_expression(text)
                except ValueError as e:
                    raise _refuse(
                        source,
                        name,
                        f"has a shape expression torch would evaluate as Python ({e}): {text[:60]!r}",
                    ) from None
            elif "default_factory_module" in text:
                _check_spec(text)
    except UnsafeContentError:
        raise
    except (ValueError, RecursionError) as e:
        raise _refuse(source, name, f"holds {e}") from None


def _check_spec(text: str) -> None:
    """Refuse a pytree spec (JSON text) naming a defaultdict factory other than a builtin container."""
    try:
        spec = json.loads(text)
    except ValueError:
        return  # not JSON: torch refuses it itself
    stack = [spec]
    while stack:
        node = stack.pop()
        _check_default_factory(node)
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and "default_factory_module" in node:
            with contextlib.suppress(ValueError):
                stack.append(json.loads(node))


# --------------------------------------------------------------------------- the second wall


class _Blocked(pickle.UnpicklingError):
    pass


def _blocked(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise _Blocked(f"torchport refused to {what} while loading an untrusted archive")

    return refuse


@contextlib.contextmanager
def untrusted_pt2_load() -> Iterator[None]:
    """While inside, torch cannot run code from an archive it loads.

    ``torch.load`` is forced to ``weights_only=True``; the pt2 loader's ``pickle.loads``, script
    object unpickler and AOTInductor loader raise; ``sympy.sympify`` of text first passes
    :func:`check_sympy_expression`; pytree specs may import only ``builtins`` and ``collections``
    (for a defaultdict's factory). Not thread-safe: torch's module attributes are swapped.
    """
    import sympy
    import torch
    from torch.export.pt2_archive import _package
    from torch.utils import _pytree

    original_load = torch.load
    original_sympify = sympy.sympify

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    def checked_sympify(a: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(a, str):
            known = set((kwargs.get("locals") or {}).keys())
            try:
                check_sympy_expression(a, known)
            except ValueError as e:
                raise _Blocked(f"refused shape expression {a[:60]!r}: {e}") from None
        return original_sympify(a, *args, **kwargs)

    def checked_import(name: str, package: str | None = None) -> Any:
        if name not in ("builtins", "collections"):
            raise _Blocked(f"torchport refused to import module {name!r} named by an untrusted archive")
        return importlib.import_module(name, package)

    blocked_pickle = types.SimpleNamespace(
        loads=_blocked("unpickle an object"), load=_blocked("unpickle an object")
    )
    swaps: list[tuple[Any, str, Any]] = [
        (torch, "load", weights_only_load),
        (sympy, "sympify", checked_sympify),
        (_package, "pickle", blocked_pickle),
        (_package, "_load_aoti", _blocked("load compiled AOTInductor code")),
        (torch._C, "_pickle_load_obj", _blocked("unpickle a script object")),
        (_pytree, "importlib", types.SimpleNamespace(import_module=checked_import)),
    ]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in swaps]
    try:
        for owner, attr, value in swaps:
            setattr(owner, attr, value)
        yield
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)


def is_refused_pickle(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is torch.load refusing a pickle under weights_only=True."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, pickle.UnpicklingError) or "weights only load failed" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def _blocked_in(exc: BaseException) -> _Blocked | None:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, _Blocked):
            return e
        e = e.__cause__ or e.__context__
    return None


def load_untrusted_pt2(path: Path, source: str) -> Any:
    """``torch.export.load`` of a ``.pt2`` that may come from anyone: :func:`check_pt2_archive`
    first, then the load inside :func:`untrusted_pt2_load`.

    Raises:
        UnsafeContentError: the archive (or what torch tried while loading it) would run code.
        Exception: whatever else torch raises for a broken archive (the caller words it).
    """
    import torch

    check_pt2_archive(path, source)
    try:
        with untrusted_pt2_load():
            return torch.export.load(str(path))
    except Exception as e:
        blocked = _blocked_in(e)
        if blocked is not None:
            raise UnsafeContentError(
                f"refusing {source}: {blocked}; torchport does not run code from model files"
            ) from e
        raise
