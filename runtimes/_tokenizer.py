"""Text in, text out for packages that carry a tokenizer: the ``tokenizers`` library only (no transformers,
no torch).

A package exported from a Hugging Face folder with a ``tokenizer.json`` records it in
``extra["text"]`` (see ``torchport.exporters._text_assets``); :class:`TextCodec` reads it back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchport.runtimes._errors import InferenceInputError, PackageError

__all__ = ["IncrementalDecoder", "TextCodec"]


@dataclass
class TextCodec:
    """The package's tokenizer and its recorded pre/post-processing.

    Attributes:
        tokenizer: a ``tokenizers.Tokenizer``.
        info: the manifest's ``extra["text"]`` (task, special tokens, chat template, id2label...).

    Example:
        >>> codec = TextCodec.from_package(pkg)                      # doctest: +SKIP
        >>> codec.decode(codec.encode("hello world"))
        'hello world'
    """

    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_package(cls, package: Any) -> TextCodec | None:
        """The codec of a :class:`~torchport.runtimes.ModelPackage`, or ``None`` when it has no tokenizer.

        Raises:
            PackageError: the manifest names a tokenizer that cannot be read.
        """
        info = package.manifest.extra.get("text")
        if not isinstance(info, dict) or not info.get("tokenizer"):
            return None
        path = Path(package.path) / str(info["tokenizer"])
        try:
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(path))
        except ImportError as e:
            raise PackageError(
                f"package {package.manifest.name!r} has a tokenizer: pip install tokenizers"
            ) from e
        except Exception as e:  # noqa: BLE001 - the library raises its own exception type
            raise PackageError(f"cannot read the tokenizer {path.name} of package {package.path}: {e}") from e
        return cls(tokenizer, dict(info))

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (with the tokenizer's own special tokens, e.g. BOS, by default)."""
        if not isinstance(text, str):
            raise InferenceInputError(f"text must be a string, got {type(text).__name__}")
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (special tokens left out by default)."""
        return str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def token_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    def apply_chat_template(self, messages: Any, *, add_generation_prompt: bool = True) -> str:
        """The prompt text of a conversation, rendered with the package's chat template as
        transformers' ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``
        renders it. Encode it with ``add_special_tokens=False`` (the template writes them).

        Raises:
            InferenceInputError: the package has no chat template, or the messages are not a list of
                ``{role, content}`` objects the template accepts.
        """
        from torchport.runtimes._chat_template import check_messages, render_chat

        template = self.info.get("chat_template")
        if not isinstance(template, str) or not template:
            raise InferenceInputError("this model has no chat template; send the prompt as text")
        return render_chat(
            template,
            check_messages(messages),
            self.info.get("special_tokens"),
            add_generation_prompt=add_generation_prompt,
        )


class IncrementalDecoder:
    """Turn a growing list of token ids into text pieces for streaming.

    Each :meth:`push` returns the text added since the last call; a piece that ends in an unfinished
    UTF-8 sequence (decoded as U+FFFD) is held back until the next token completes it.

    Example:
        >>> dec = IncrementalDecoder(codec)                          # doctest: +SKIP
        >>> "".join(dec.push(t) for t in ids) + dec.flush() == codec.decode(ids)
        True
    """

    def __init__(self, codec: TextCodec, *, skip_special_tokens: bool = True) -> None:
        self.codec = codec
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.codec.decode(self.ids, skip_special_tokens=self.skip)
        if text.endswith("\ufffd"):
            return ""
        return self._take(text)

    def flush(self) -> str:
        return self._take(self.codec.decode(self.ids, skip_special_tokens=self.skip))

    def _take(self, text: str) -> str:
        if not text.startswith(self.sent):  # a merge changed earlier text: send nothing rather than repeat
            self.sent = text
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new
