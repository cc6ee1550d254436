"""Chat templates rendered as Hugging Face's ``apply_chat_template(..., tokenize=False)`` renders them,
with ``jinja2`` alone (no transformers, no torch).

The template comes from the source folder's ``tokenizer_config.json`` (or ``chat_template.jinja``),
recorded in the package's manifest (``extra["text"]["chat_template"]``). It runs in jinja2's
immutable sandbox with transformers' settings (``trim_blocks``, ``lstrip_blocks``, loop controls,
``raise_exception``, ``strftime_now``, a ``tojson`` that does not escape HTML, the
``{% generation %}`` tag) and sees ``messages``, ``add_generation_prompt`` and the special tokens
(``bos_token``, ``eos_token``...), as transformers passes them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from torchport.runtimes._errors import InferenceInputError, PackageError

__all__ = ["check_messages", "render_chat"]

#: most messages one conversation may have
MAX_MESSAGES = 1024
_SPECIAL = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The messages of a chat request, checked: a non-empty list of objects with a string ``role`` and
    ``content`` (other keys pass through to the template; ``null`` values are dropped, as transformers
    drops them).

    Raises:
        InferenceInputError: naming the message and what is wrong with it.
    """
    if not isinstance(messages, list) or not messages:
        raise InferenceInputError("messages must be a non-empty list of {role, content} objects")
    if len(messages) > MAX_MESSAGES:
        raise InferenceInputError(
            f"messages has {len(messages)} entries; at most {MAX_MESSAGES} are accepted"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise InferenceInputError(f"messages[{i}] must be an object with role and content")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise InferenceInputError(f"messages[{i}].{key} must be a string, got {m.get(key)!r:.60}")
        if not m["role"]:
            raise InferenceInputError(f"messages[{i}].role must not be empty")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


@lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    try:
        import jinja2
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise PackageError("this package's chat template needs jinja2: pip install 'torchport[serve]'") from e

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers marks assistant text with it):
        renders its body unchanged."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise PackageError(f"the package's chat template does not parse: {e}") from e


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    special_tokens: Mapping[str, str | None] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` with a chat template (the prompt text, special tokens written out).

    Args:
        template: the jinja2 chat template.
        messages: ``[{"role": ..., "content": ...}, ...]`` (see :func:`check_messages`).
        special_tokens: ``{"bos": "<s>", "eos": "</s>", ...}`` (the manifest's record); each set one
            is passed as ``bos_token``, ``eos_token``...
        add_generation_prompt: end with the header of the assistant's turn.

    Example:
        >>> render_chat("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
        ...             [{"role": "user", "content": "hi"}], {"bos": "<s>"})
        '<s>hi'

    Raises:
        InferenceInputError: the template refused the messages (``raise_exception``, a missing key).
        PackageError: the template does not parse, or jinja2 is not installed.
    """
    import jinja2

    compiled = _compile(template)
    tokens = {f"{k}_token": v for k, v in (special_tokens or {}).items() if k in _SPECIAL and v is not None}
    try:
        return compiled.render(
            messages=messages,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **tokens,
        )
    except jinja2.exceptions.TemplateError as e:
        raise InferenceInputError(f"the chat template refused the messages: {e}") from None
    except (TypeError, ValueError, LookupError, AttributeError) as e:
        raise InferenceInputError(
            f"the chat template failed on these messages: {type(e).__name__}: {e}"
        ) from None
