"""Optional API-key auth (``Authorization: Bearer <key>``), compared in constant time."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from torchport.runtimes._errors import ServingError

#: paths that never need a key (orchestrator probes)
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class ApiKeyAuth:
    """Checks the bearer token of each request against one key.

    Example:
        >>> auth = ApiKeyAuth.from_sources(env="TORCHPORT_API_KEY")      # doctest: +SKIP
        >>> auth.allowed("Bearer s3cret")
        True
    """

    def __init__(self, key: str) -> None:
        key = key.strip()
        if len(key) < 8:
            raise ServingError(
                "the API key must be at least 8 characters; generate one with `openssl rand -hex 32`"
            )
        self._expected = key.encode()

    @classmethod
    def from_sources(
        cls, env: str | None = None, file: str | os.PathLike[str] | None = None
    ) -> ApiKeyAuth | None:
        """The key from environment variable ``env`` or from ``file``; ``None`` when neither is given.

        Raises:
            ServingError: the variable is unset/empty or the file is missing/empty.
        """
        if env and file:
            raise ServingError("give the API key either with --api-key-env or with --api-key-file, not both")
        if env:
            value = os.environ.get(env, "")
            if not value.strip():
                raise ServingError(f"--api-key-env {env}: environment variable {env} is not set or empty")
            return cls(value)
        if file:
            path = Path(file)
            try:
                value = path.read_text()
            except OSError as e:
                raise ServingError(f"--api-key-file {file}: cannot read it: {e.strerror or e}") from e
            if not value.strip():
                raise ServingError(f"--api-key-file {file}: the file is empty")
            return cls(value)
        return None

    def allowed(self, authorization: str | None) -> bool:
        """True for ``Bearer <key>`` (the scheme is case-insensitive, RFC 9110 11.1)."""
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode("utf-8", "replace"), self._expected)
