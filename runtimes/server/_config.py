"""Serving configuration: per-model settings, version policies, and ``serve.toml``.

A ``serve.toml`` has one ``[server]`` table (every :class:`ServerConfig` field, e.g. ``port``,
``grpc_port``, ``model_control``) and one ``[models.NAME]`` table per model, ``NAME`` being the
model's folder in the repository::

    [server]
    port = 8000
    grpc_port = 8001
    strict_readiness = true

    [models.cnn]
    variant = "int8"
    max_batch_size = 16
    max_queue_delay_ms = 2
    instances = 2
    version_policy = "latest:2"          # or "all", "specific:1,3", {latest = 2}, {specific = [1, 3]}
    warmup_inputs = "cnn-samples.npz"    # relative to the config file

    [models.bert]
    name = "bert-base"                   # serve the folder bert/ under another name
    provider = ["cuda", "cpu"]

Keys missing from a model table come from the command-line flags (or their defaults), so the flags
of ``torchport serve`` are the settings of every model and a table only says what differs.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchport.runtimes._errors import UsageError

if TYPE_CHECKING:
    from torchport.runtimes.server._http import HttpLimits

#: keys of a [models.NAME] table -> what they hold
MODEL_KEYS = (
    "name",
    "variant",
    "max_batch_size",
    "max_queue_delay_ms",
    "instances",
    "intra_op_threads",
    "provider",
    "allow_fallback",
    "version_policy",
    "warmup",
    "warmup_inputs",
)
VARIANTS = ("fp32", "fp16", "int8", "int4")


def _version_key(v: str) -> tuple[int, int | str]:
    return (0, int(v)) if v.isdigit() else (1, v)


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve (Triton's ``version_policy``).

    ``latest`` serves the ``count`` highest versions, ``all`` every version, ``specific`` the
    listed ``versions``.

    Example:
        >>> VersionPolicy.parse("latest:2").select(["1", "2", "3"])
        ['2', '3']
        >>> VersionPolicy.parse({"specific": [1, 3]}).select(["1", "2", "3"])
        ['1', '3']
    """

    kind: str = "latest"
    count: int = 1
    versions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Any, where: str = "--version-policy") -> VersionPolicy:
        """Read ``"latest"``, ``"latest:N"``, ``"all"``, ``"specific:1,3"``, ``[1, 3]``,
        ``{latest = N}``, ``{latest = {num_versions = N}}``, ``{all = {}}`` or ``{specific = [1, 3]}``.

        Raises:
            UsageError: anything else, with the accepted forms.
        """
        if isinstance(value, VersionPolicy):
            return value
        hint = (
            f"{where}: expected 'latest', 'latest:N', 'all' or 'specific:1,3' "
            f"(in TOML also {{latest = N}} or {{specific = [1, 3]}}), got {value!r}"
        )
        if isinstance(value, (list, tuple)):
            return cls._specific(value, hint)
        if isinstance(value, Mapping):
            if len(value) != 1:
                raise UsageError(hint)
            ((kind, arg),) = value.items()
            if kind == "all":
                return cls("all")
            if kind == "latest":
                n = arg.get("num_versions") if isinstance(arg, Mapping) else arg
                return cls._latest(n, hint)
            if kind == "specific":
                vs = arg.get("versions") if isinstance(arg, Mapping) else arg
                return cls._specific(vs, hint)
            raise UsageError(hint)
        if not isinstance(value, str):
            raise UsageError(hint)
        kind, _, arg = value.strip().partition(":")
        if kind == "all" and not arg:
            return cls("all")
        if kind == "latest":
            return cls._latest(arg or 1, hint)
        if kind == "specific" and arg:
            return cls._specific(arg.split(","), hint)
        raise UsageError(hint)

    @classmethod
    def _latest(cls, n: Any, hint: str) -> VersionPolicy:
        try:
            count = int(n)
        except (TypeError, ValueError):
            raise UsageError(hint) from None
        if count < 1 or isinstance(n, bool):
            raise UsageError(hint.replace("expected", "latest needs a count >= 1;  expected", 1))
        return cls("latest", count)

    @classmethod
    def _specific(cls, versions: Any, hint: str) -> VersionPolicy:
        if not isinstance(versions, (list, tuple)) or not versions:
            raise UsageError(hint)
        out = tuple(str(v).strip() for v in versions)
        if any(not v or isinstance(orig, bool) for v, orig in zip(out, versions)):
            raise UsageError(hint)
        return cls("specific", versions=out)

    def select(self, versions: Sequence[str]) -> list[str]:
        """The versions this policy serves, out of ``versions`` (ascending)."""
        ordered = sorted(versions, key=_version_key)
        if self.kind == "all":
            return ordered
        if self.kind == "latest":
            return ordered[-self.count :]
        return [v for v in ordered if v in self.versions]

    def __str__(self) -> str:
        if self.kind == "latest":
            return "latest" if self.count == 1 else f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(self.versions)
        return "all"

    def to_triton(self) -> dict[str, Any]:
        """Triton's model-configuration JSON form."""
        if self.kind == "latest":
            return {"latest": {"num_versions": self.count}}
        if self.kind == "specific":
            return {"specific": {"versions": [int(v) if v.isdigit() else v for v in self.versions]}}
        return {"all": {}}


@dataclass(frozen=True)
class ModelSettings:
    """How one model is served (all versions of it).

    Attributes:
        name: the name it is served under (default: its manifest's name for a package served alone,
            its folder's name in a repository).
        variant: package variant: ``fp32``, ``fp16``, ``int8`` or ``int4``.
        max_batch_size: dynamic batching limit in rows (1 turns batching off).
        max_queue_delay_ms: longest a request waits for others to join its batch.
        instances: batches of this model in flight at once (worker threads); ``None``: the server's.
        intra_op_threads: ONNX Runtime threads per run.
        providers: execution providers in priority order.
        allow_fallback: accept a missing provider.
        version_policy: which versions to load.
        warmup: warm-up runs per version before it reports ready.
        warmup_inputs: a ``.npz`` with one array per input to warm up on (default: random inputs).
    """

    name: str | None = None
    variant: str = "fp32"
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    instances: int | None = None
    intra_op_threads: int | None = 1
    providers: str | tuple[str, ...] = "cpu"
    allow_fallback: bool = False
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    warmup: int = 2
    warmup_inputs: Path | None = None

    def validate(self, where: str) -> None:
        """Raise a :class:`UsageError` naming ``where`` for a value out of range."""
        if self.variant not in VARIANTS:
            raise UsageError(f"{where}: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.max_batch_size < 1:
            raise UsageError(
                f"{where}: max_batch_size must be >= 1 (1 turns batching off), got {self.max_batch_size}"
            )
        if not (self.max_queue_delay_ms >= 0 and math.isfinite(self.max_queue_delay_ms)):
            raise UsageError(f"{where}: max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.instances is not None and self.instances < 1:
            raise UsageError(f"{where}: instances must be >= 1, got {self.instances}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise UsageError(f"{where}: intra_op_threads must be >= 1, got {self.intra_op_threads}")
        if self.warmup < 0:
            raise UsageError(f"{where}: warmup must be >= 0, got {self.warmup}")
        if self.warmup_inputs is not None and not Path(self.warmup_inputs).is_file():
            raise UsageError(f"{where}: warmup_inputs {str(self.warmup_inputs)!r} is not a file (.npz)")


def _expect(value: Any, kinds: tuple[type, ...], what: str, where: str, key: str) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        raise UsageError(f"{where}: {key} must be {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise UsageError(f"{where}: {key} must be {what}, got {value!r}")
    return value


def _unknown_key(key: str, known: Sequence[str], where: str) -> UsageError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return UsageError(f"{where}: unknown key {key!r}{hint}")


def model_overrides(table: Mapping[str, Any], where: str, base_dir: Path | None = None) -> dict[str, Any]:
    """Check one ``[models.NAME]`` table and turn it into :class:`ModelSettings` field values.

    Raises:
        UsageError: an unknown key (with the closest known one) or a value of the wrong type.
    """
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key == "providers":  # already checked (a ServerConfig built from another one's models)
            key, value = "provider", list(value) if isinstance(value, (list, tuple)) else value
        if key not in MODEL_KEYS:
            raise _unknown_key(key, MODEL_KEYS, where)
        if key in ("name", "variant"):
            out[key] = _expect(value, (str,), "a string", where, key)
        elif key in ("max_batch_size", "instances", "intra_op_threads", "warmup"):
            out[key] = _expect(value, (int,), "an integer", where, key)
        elif key == "max_queue_delay_ms":
            out[key] = float(_expect(value, (int, float), "a number of milliseconds", where, key))
        elif key == "allow_fallback":
            out[key] = _expect(value, (bool,), "true or false", where, key)
        elif key == "provider":
            if isinstance(value, str):
                value = [p.strip() for p in value.split(",") if p.strip()]
            if not isinstance(value, list) or not value or not all(isinstance(p, str) for p in value):
                raise UsageError(f"{where}: provider must be a name or a list of names, got {value!r}")
            out["providers"] = tuple(value)
        elif key == "version_policy":
            out[key] = VersionPolicy.parse(value, f"{where}: version_policy")
        elif key == "warmup_inputs":
            path = Path(_expect(value, (str, Path), "a path to a .npz file", where, key))
            out[key] = path if path.is_absolute() or base_dir is None else base_dir / path
    if "name" in out and (not out["name"] or "/" in out["name"]):
        raise UsageError(f"{where}: name must be a non-empty name without '/', got {out['name']!r}")
    merged = replace(ModelSettings(), **out)
    merged.validate(where)
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse ``path`` as TOML; a syntax error names the file and line.

    Raises:
        UsageError: the file is missing or not valid TOML.
    """
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise UsageError(f"--config {p}: cannot read it: {e.strerror or e}") from e
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config {p}: not valid TOML: {e}") from e


def server_field_names(config_cls: type) -> list[str]:
    """The ``[server]`` keys: every field of ``config_cls`` except the per-model table."""
    names = [f.name for f in fields(config_cls) if f.name not in ("models", "config_path")]
    return names + ["provider"]


MODEL_CONTROL_MODES = ("none", "explicit", "poll")


@dataclass
class ServerConfig:
    """Everything ``torchport serve`` can set (``[server]`` of ``serve.toml``, or its flags).

    The model fields (``variant`` ... ``warmup_inputs``) are every model's defaults; ``models``
    holds the per-model ``[models.FOLDER]`` overrides (see :meth:`model_settings`).

    Attributes:
        host / port: where to listen (port 0 picks a free port).
        grpc_port: also serve the Open Inference Protocol over gRPC on this port (0: a free one).
        metrics_port: serve ``/metrics`` (without auth) on this port instead of the main one.
        metrics_public: let ``/metrics`` on the main port through without the API key.
        providers: execution providers in priority order (``"cpu"``, ``"cuda"``, ``"tensorrt"``...).
        allow_fallback: serve on the next available provider when a requested one is missing.
        variant: package variant to serve (``fp32``, ``fp16``, ``int8``, ``int4``).
        max_batch_size: dynamic batching limit in rows; 1 turns batching off.
        max_queue_delay_ms: longest a request waits for others to join its batch.
        threads: inference worker threads (= batches in flight per model); default: CPU count.
        intra_op_threads: ONNX Runtime threads per run (default 1: parallelism comes from workers).
        warmup: warm-up runs per model before it reports ready.
        warmup_inputs: ``.npz`` of inputs to warm up on (default: random inputs).
        version_policy: which versions load: ``latest`` (default), ``latest:N``, ``all``, ``specific:1,3``.
        api_key_env / api_key_file: where to read the API key (auth is off without one).
        max_request_bytes: request body limit (413 above it).
        drain_timeout: seconds SIGTERM waits for in-flight requests.
        access_log: write one JSON line per request.
        inline_below_us: run a model on the event loop thread instead of the pool when its runs
            average less than this many microseconds (a thread hand-off costs more); 0 disables.
        idle_timeout: close connections idle (keep-alive, or stalled mid-request) for this many seconds.
        max_connections: open connections at most (more get 503); default: what the file descriptor
            limit leaves room for.
        header_timeout / body_timeout: seconds a request's whole header block / whole body may take
            to arrive (408 after that; slow clients cannot hold connections forever).
        max_header_bytes: largest request header block (431 above it; URLs above 8 KiB get 414).
        max_inflight_body_bytes: request body bytes held across all connections (503 above it).
        model_control: ``none`` (load everything at start, no load/unload API), ``explicit`` (load at
            start only ``load`` or the models in the config; the API loads/unloads), ``poll`` (also
            watch the folder and load new or changed versions).
        load: models to load at start under ``explicit``.
        poll_interval: seconds between two scans of the folder under ``poll``.
        exit_on_error: exit non-zero when a model fails to load at start (``None``: on when serving
            one package, off for a repository).
        strict_readiness: /v2/health/ready is 200 only when every model meant to load is ready
            (otherwise: when at least one is).
        models: per-model overrides, by folder name (``[models.FOLDER]`` tables, checked).
        config_path: the ``serve.toml`` these settings came from (SIGHUP re-reads it).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = None
    metrics_port: int | None = None
    metrics_public: bool = False
    providers: str | Sequence[str] = "cpu"
    allow_fallback: bool = False
    variant: str = "fp32"
    max_batch_size: int = 32
    max_queue_delay_ms: float = 0.0
    threads: int | None = None
    intra_op_threads: int | None = 1
    warmup: int = 2
    warmup_inputs: str | None = None
    version_policy: str | VersionPolicy = "latest"
    api_key_env: str | None = None
    api_key_file: str | None = None
    max_request_bytes: int = 64 * 1024 * 1024
    drain_timeout: float = 30.0
    access_log: bool = True
    idle_timeout: float = 75.0
    inline_below_us: float = 30.0
    max_connections: int | None = None
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024
    max_inflight_body_bytes: int = 256 * 1024 * 1024
    model_control: str = "none"
    load: Sequence[str] = ()
    poll_interval: float = 2.0
    exit_on_error: bool | None = None
    strict_readiness: bool = False
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_path: str | None = None

    def __post_init__(self) -> None:
        for attr, flag in (
            ("port", "--port"),
            ("grpc_port", "--grpc-port"),
            ("metrics_port", "--metrics-port"),
        ):
            value = getattr(self, attr)
            if value is not None and not 0 <= value <= 65535:
                raise UsageError(f"{flag} {value} is not a TCP port; use 0..65535 (0 picks a free one)")
        if self.max_batch_size < 1:
            raise UsageError(
                f"--max-batch-size must be >= 1 (1 turns batching off), got {self.max_batch_size}"
            )
        if self.max_queue_delay_ms < 0:
            raise UsageError(f"--max-queue-delay-ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.max_request_bytes < 1024:
            raise UsageError(f"--max-request-bytes must be at least 1024, got {self.max_request_bytes}")
        if self.idle_timeout <= 0:
            raise UsageError(f"idle_timeout must be > 0 seconds, got {self.idle_timeout}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be >= 0, got {self.warmup}")
        self._check_http_limits()
        if self.model_control not in MODEL_CONTROL_MODES:
            raise UsageError(
                f"--model-control must be one of {', '.join(MODEL_CONTROL_MODES)}, got {self.model_control!r}"
            )
        if self.load and self.model_control != "explicit":
            raise UsageError("--load NAME needs --model-control explicit (other modes load every model)")
        if self.poll_interval <= 0:
            raise UsageError(f"--poll-interval must be > 0 seconds, got {self.poll_interval}")
        self.version_policy = VersionPolicy.parse(self.version_policy)
        self.load = tuple(self.load)
        checked = {}
        for folder, table in self.models.items():
            base = Path(self.config_path).parent if self.config_path else None
            where = f"{self.config_path}: [models.{folder}]" if self.config_path else f"[models.{folder}]"
            checked[folder] = model_overrides(table, where, base) if table else {}
        self.models = checked
        self.model_settings("").validate("server")

    def _check_http_limits(self) -> None:
        if self.max_connections is not None and self.max_connections < 1:
            raise UsageError(f"--max-connections must be >= 1, got {self.max_connections}")
        for flag, value in (("--header-timeout", self.header_timeout), ("--body-timeout", self.body_timeout)):
            if value <= 0:
                raise UsageError(f"{flag} must be > 0 seconds, got {value}")
        if self.max_header_bytes < 1024:
            raise UsageError(f"--max-header-bytes must be at least 1024, got {self.max_header_bytes}")
        if self.max_inflight_body_bytes < self.max_request_bytes:
            raise UsageError(
                f"--max-inflight-body-bytes ({self.max_inflight_body_bytes}) must be at least "
                f"--max-request-bytes ({self.max_request_bytes})"
            )

    def http_limits(self) -> HttpLimits:
        """The HTTP layer's limits (:class:`~torchport.runtimes.server._http.HttpLimits`) from these settings."""
        from torchport.runtimes.server._http import HttpLimits

        return HttpLimits(
            max_request_bytes=self.max_request_bytes,
            max_inflight_body_bytes=self.max_inflight_body_bytes,
            max_header_bytes=self.max_header_bytes,
            max_connections=self.max_connections,
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            idle_timeout=self.idle_timeout,
        )

    @property
    def worker_threads(self) -> int:
        import os

        return self.threads or max(1, min(8, os.cpu_count() or 1))

    def model_settings(self, folder: str) -> ModelSettings:
        """The settings of the model in ``folder``: these defaults, then its ``[models.FOLDER]`` table."""
        providers = self.providers if isinstance(self.providers, str) else tuple(self.providers)
        base = ModelSettings(
            variant=self.variant,
            max_batch_size=self.max_batch_size,
            max_queue_delay_ms=self.max_queue_delay_ms,
            instances=self.threads,
            intra_op_threads=self.intra_op_threads,
            providers=providers,
            allow_fallback=self.allow_fallback,
            version_policy=VersionPolicy.parse(self.version_policy),
            warmup=self.warmup,
            warmup_inputs=Path(self.warmup_inputs) if self.warmup_inputs else None,
        )
        return replace(base, **self.models.get(folder, {}))

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> ServerConfig:
        """Read ``serve.toml``; ``overrides`` (flags given on the command line) win over ``[server]``.

        Example:
            >>> cfg = ServerConfig.from_toml("serve.toml", port=9000)   # doctest: +SKIP
            >>> cfg.model_settings("cnn").variant
            'int8'

        Raises:
            UsageError: unknown tables or keys (with the closest known one), wrong types, bad values.
        """
        data = read_toml(path)
        where = str(path)
        for key in data:
            if key not in ("server", "models"):
                raise _unknown_key(key, ["server", "models"], f"{where}: top-level table")
        server = data.get("server", {})
        models = data.get("models", {})
        if not isinstance(server, dict) or not isinstance(models, dict):
            raise UsageError(f"{where}: [server] and [models.NAME] must be tables")
        known = server_field_names(cls)
        defaults = {f.name: f.default for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in server.items():
            if key not in known:
                raise _unknown_key(key, known, f"{where} [server]")
            default = defaults[key]
            if isinstance(default, bool) and not isinstance(value, bool):
                raise UsageError(f"{where} [server]: {key} must be true or false, got {value!r}")
            if (
                isinstance(default, int)
                and not isinstance(default, bool)
                and (isinstance(value, bool) or not isinstance(value, (int, float)))
            ):
                raise UsageError(f"{where} [server]: {key} must be a number, got {value!r}")
            values[key] = value
        if "provider" in values:
            values["providers"] = values.pop("provider")
        for name, table in models.items():
            if not isinstance(table, dict):
                raise UsageError(f"{where}: models.{name} must be a table ([models.{name}])")
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values, models=models, config_path=str(path))
        except TypeError as e:  # a value of a type the field cannot take
            raise UsageError(f"{where}: {e}") from None
