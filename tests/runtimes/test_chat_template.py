"""Chat templates render as transformers' apply_chat_template(..., tokenize=False, add_generation_prompt=True)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

pytest.importorskip("transformers")

from tests.lm_models import train_tokenizer  # noqa: E402
from torchport.exporters._text_assets import copy_text_assets  # noqa: E402
from torchport.runtimes import InferenceInputError, TextCodec  # noqa: E402
from torchport.runtimes._chat_template import render_chat  # noqa: E402

#: a template in the style of real ones: a default system prompt, role checks, loop variables,
#: whitespace control, trim_blocks/lstrip_blocks, tojson, the generation tag and the generation prompt
TEMPLATE = """{{ bos_token }}
{% if messages[0]['role'] == 'system' %}
    {% set system = messages[0]['content'] %}
    {% set rest = messages[1:] %}
{% else %}
    {% set system = 'You are a tiny model.' %}
    {% set rest = messages %}
{% endif %}
<|system|>
{{ system | trim }}{{ eos_token }}
{% for message in rest %}
    {% if message['role'] not in ['user', 'assistant'] %}
        {{ raise_exception('roles must be user or assistant, got ' + message['role']) }}
    {% endif %}
    {% if loop.index0 % 2 == 0 and message['role'] != 'user' %}
        {{ raise_exception('conversation roles must alternate user/assistant') }}
    {% endif %}
<|{{ message['role'] }}|>
    {% if message['role'] == 'assistant' %}
{% generation %}{{ message['content'] | trim }}{% endgeneration %}{{ eos_token }}
    {% else %}
{{ message['content'] }}{% if message.get('meta') %} {{ message['meta'] | tojson }}{% endif %}{{ eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|assistant|>
{% endif %}"""

CONVERSATIONS = [
    [{"role": "user", "content": "hello world"}],
    [
        {"role": "system", "content": "  Answer in <b>one</b> word.  "},
        {"role": "user", "content": "the quick brown fox?", "meta": {"lang": "en", "note": "<&>"}},
        {"role": "assistant", "content": " jumps "},
        {"role": "user", "content": "and the lazy dog?"},
    ],
    [{"role": "user", "content": 'ünïcode ✓ and "quotes"\nnew line'}],
]


def _folder(tmp_path: Path, template) -> Path:
    folder = tmp_path / "tok"
    folder.mkdir()
    train_tokenizer(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(chat_template=template, unk_token="<s>")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _codec(folder: Path, tmp_path: Path) -> TextCodec:
    dest = tmp_path / "pkg"
    dest.mkdir()
    info = copy_text_assets(str(folder), dest, None, task="text-generation")
    assert info is not None
    return TextCodec(Tokenizer.from_file(str(dest / "tokenizer.json")), info)


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_rendered_prompt_equals_transformers(tmp_path: Path, messages: list[dict]) -> None:
    from transformers import AutoTokenizer

    folder = _folder(tmp_path, TEMPLATE)
    hf = AutoTokenizer.from_pretrained(str(folder))
    want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    got = _codec(folder, tmp_path).apply_chat_template(messages)
    assert got == want
    assert got.endswith("<|assistant|>\n") and got.startswith("<s>")
    # the ids the server generates from equal transformers' tokenized chat
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(got, add_special_tokens=False).ids
    assert ids == hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )


def test_named_templates_use_the_default_one(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    named = [
        {"name": "tool_use", "template": "TOOLS {{ messages | length }}"},
        {"name": "default", "template": TEMPLATE},
    ]
    folder = _folder(tmp_path, named)
    want = AutoTokenizer.from_pretrained(str(folder)).apply_chat_template(
        CONVERSATIONS[1], tokenize=False, add_generation_prompt=True
    )
    assert _codec(folder, tmp_path).apply_chat_template(CONVERSATIONS[1]) == want


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ("hello", r"^messages must be a non-empty list of \{role, content\} objects$"),
        ([], r"^messages must be a non-empty list"),
        ([{"role": "user"}], r"^messages\[0\]\.content must be a string, got None$"),
        (
            [{"role": "user", "content": "a"}, ["x"]],
            r"^messages\[1\] must be an object with role and content$",
        ),
        ([{"role": 3, "content": "a"}], r"^messages\[0\]\.role must be a string, got 3$"),
        (
            [{"role": "tool", "content": "a"}],
            r"^the chat template refused the messages: roles must be user or assistant, got tool$",
        ),
        (
            [{"role": "assistant", "content": "a"}],
            r"^the chat template refused the messages: conversation roles must alternate user/assistant$",
        ),
    ],
)
def test_bad_messages_are_refused(tmp_path: Path, messages, message: str) -> None:
    codec = _codec(_folder(tmp_path, TEMPLATE), tmp_path)
    with pytest.raises(InferenceInputError, match=message):
        codec.apply_chat_template(messages)


def test_a_model_without_a_chat_template(tmp_path: Path) -> None:
    folder = _folder(tmp_path, None)
    codec = _codec(folder, tmp_path)
    assert codec.info["chat_template"] is None
    with pytest.raises(
        InferenceInputError, match=r"^this model has no chat template; send the prompt as text$"
    ):
        codec.apply_chat_template([{"role": "user", "content": "hi"}])


def test_the_template_runs_in_a_sandbox() -> None:
    with pytest.raises(
        InferenceInputError, match=r"chat template refused the messages: .*unsafe|access to attribute"
    ):
        render_chat("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}])
