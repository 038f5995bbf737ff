"""The real `openai` SDK against a real server and a real tiny-chat replica."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from transformers import AutoTokenizer

from tests.e2e.harness import Server


@pytest.fixture(scope="module")
def endpoint(server: Server) -> Iterator[dict[str, str]]:
    ep = server.create_tiny()
    server.wait_state(ep["id"], {"STARTED"})
    yield ep
    with server.client() as c:
        c.delete(f"/v1/endpoints/{ep['id']}")


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0)


def test_chat_completion_is_generated_by_the_replica_with_usage(
        client: openai.OpenAI, endpoint: dict[str, str], tiny_model: object) -> None:
    out = client.chat.completions.create(
        model=endpoint["name"], messages=[{"role": "user", "content": "hello there"}], max_tokens=6)
    assert out.model == endpoint["name"]
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage is not None and 0 < out.usage.completion_tokens <= 6
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    rendered = tok.apply_chat_template([{"role": "user", "content": "hello there"}],
                                       add_generation_prompt=True, tokenize=False)
    assert out.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_chat_arrives_in_chunks_and_matches_usage(
        client: openai.OpenAI, endpoint: dict[str, str]) -> None:
    stream = client.chat.completions.create(
        model=endpoint["name"], messages=[{"role": "user", "content": "count"}], max_tokens=5,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 2, "tokens arrive as separate chunks"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens <= 5


def test_completions_with_and_without_stream(client: openai.OpenAI, endpoint: dict[str, str]) -> None:
    out = client.completions.create(model=endpoint["name"], prompt="The weather", max_tokens=4)
    assert out.choices[0].text != "" or out.choices[0].finish_reason == "stop"
    assert out.usage is not None and out.usage.completion_tokens <= 4
    pieces = list(client.completions.create(model=endpoint["name"], prompt="The weather", max_tokens=4,
                                            stream=True))
    assert pieces and pieces[-1].choices[0].finish_reason in ("stop", "length")


def test_models_list_shows_the_endpoints_this_key_can_call(
        client: openai.OpenAI, endpoint: dict[str, str]) -> None:
    ids = [m.id for m in client.models.list()]
    assert endpoint["name"] in ids


def test_unknown_model_is_a_404_not_a_hang(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="admin/nope-00000000",
                                       messages=[{"role": "user", "content": "x"}])


def test_a_stopped_endpoint_answers_endpoint_stopped_at_once(server: Server, client: openai.OpenAI) -> None:
    ep = server.create_tiny(state="STOPPED")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=ep["name"], messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "endpoint_stopped"
    assert "start" in str(err.value)
