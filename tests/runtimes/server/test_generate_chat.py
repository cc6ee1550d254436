"""/generate with ``messages``: the package's chat template renders the prompt (as transformers'
apply_chat_template with add_generation_prompt=True), and the model generates from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.lm_models import save_causal_lm  # noqa: E402
from tests.runtimes.conftest import http, running_server  # noqa: E402
from tests.runtimes.test_chat_template import CONVERSATIONS, TEMPLATE  # noqa: E402
from torchport.exporters import export_model  # noqa: E402
from torchport.runtimes import ModelPackage, Session, TextCodec  # noqa: E402


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = save_causal_lm("llama", tmp_path_factory.mktemp("chat") / "src")
    config = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return src


@pytest.fixture(scope="module")
def server(source: Path) -> Iterator:
    repo = source.parent / "repo"
    export_model(str(source), repo / "llama", quiet=True)
    with running_server(repo) as srv:
        yield srv


def _post(server, path: str, obj: object) -> tuple[int, dict]:
    status, _, body = http(server, "POST", path, json.dumps(obj).encode())
    return status, json.loads(body)


@pytest.mark.parametrize("messages", CONVERSATIONS[:2])
def test_generate_from_messages(source: Path, server, messages: list[dict]) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(source)).apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    path = server.repository.get("llama").path
    want = Session.from_package(path).generate([ids], max_new_tokens=12, ignore_eos=True)
    codec = TextCodec.from_package(ModelPackage.load(path))
    status, body = _post(
        server, "/v2/models/llama/generate", {"messages": messages, "max_tokens": 12, "ignore_eos": True}
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == len(ids)  # the template's <s>, no second one from the tokenizer
    assert body["text_output"] == codec.decode(want.tokens[0])
    # the stream takes the same request
    conn_status, _, raw = http(
        server,
        "POST",
        "/v2/models/llama/generate_stream",
        json.dumps({"messages": messages, "parameters": {"max_tokens": 12, "ignore_eos": True}}).encode(),
    )
    events = [json.loads(e[len("data: ") :]) for e in raw.decode().split("\n\n") if e]
    assert conn_status == 200 and "".join(e["text_output"] for e in events) == body["text_output"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"messages": [{"role": "user", "content": "hi"}], "text_input": "hi"},
            r"^send either text_input or messages, not both$",
        ),
        ({"messages": "hi"}, r"^messages must be a non-empty list of \{role, content\} objects$"),
        ({"messages": [{"role": "user", "content": 5}]}, r"^messages\[0\]\.content must be a string, got 5$"),
        (
            {"messages": [{"role": "robot", "content": "hi"}]},
            r"^the chat template refused the messages: roles must be user or assistant, got robot$",
        ),
    ],
)
def test_bad_messages_are_400s(server, body: dict, message: str) -> None:
    import re

    for path in ("/v2/models/llama/generate", "/v2/models/llama/generate_stream"):
        status, reply = _post(server, path, body)
        assert status == 400 and re.search(message, reply["error"]), reply
