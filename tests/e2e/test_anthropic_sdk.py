"""The official `anthropic` Python SDK against the sidecar's `/v1/messages`, with the route's
backend on the fake provider speaking Anthropic's own API (passed natively) or OpenAI's
(translated): plain, streamed, tool use round trips, count_tokens and errors."""

from __future__ import annotations

import anthropic
import pytest

from conftest import Sidecar, anthropic as anthropic_backend, dump, gemini, route, upstream

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 2},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "days", "unit"],
    },
}

# Route -> (scenario segment on the fake, the provider the sidecar reports).
ROUTES = {
    "claude-native": ("ok,id=msg-native", "anthropic"),
    "claude-via-openai": ("ok,id=msg-openai", "openaiCompatible"),
    "claude-via-gemini": ("ok,id=msg-gemini", "gemini"),
    # Gemini 3 refuses replayed calls without their thought signature, which rides in the id.
    "claude-via-gemini3": ("ok,id=msg-gemini3", "gemini"),
}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    config = dump([
        route("claude-native", [anthropic_backend("claude", fake.url("ok,id=msg-native"))]),
        route("claude-via-openai", [upstream("gpt", fake.url("ok,id=msg-openai"))]),
        route("claude-via-gemini", [gemini("gem", fake.gemini_url("ok,id=msg-gemini"))]),
        route("claude-via-gemini3", [gemini("gem3", fake.gemini_url("ok,id=msg-gemini3"),
                                            model="gemini-3-pro-preview")]),
    ])
    s = Sidecar(tmp_path_factory.mktemp("anthropic-sdk"), config)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(gw):
    # The SDK appends /v1/messages to the base URL; its key never leaves the sidecar.
    return anthropic.Anthropic(base_url=gw.base, api_key="sk-ant-unused", max_retries=0, timeout=20.0)


def upstream_of(fake, model):
    reqs = fake.requests(ROUTES[model][0])
    assert reqs, f"nothing reached the fake for {model}"
    return reqs[-1]


@pytest.mark.parametrize("model", list(ROUTES))
def test_messages_create(client, fake, model):
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=300, system="Be brief.",
        messages=[{"role": "user", "content": "ping from anthropic"}])
    m = raw.parse()
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["text"]
    assert m.content[0].text == "Hello from the fake provider. You said: ping from anthropic"
    assert m.stop_reason == "end_turn"
    assert m.usage.output_tokens == 10 and m.usage.input_tokens > 0
    assert raw.headers["x-llmesh-route"] == model
    assert raw.headers["x-llmesh-provider"] == ROUTES[model][1]
    sent = upstream_of(fake, model)
    body = sent["body"]
    if model == "claude-native":
        assert sent["path"].endswith("/v1/messages")
        assert body["system"] == "Be brief." and body["max_tokens"] == 300
        assert body["messages"] == [{"role": "user", "content": "ping from anthropic"}]
        # Passed through natively: the client's own API version goes along.
        assert sent["headers"]["anthropic-version"] == client.default_headers["anthropic-version"]
        assert sent["headers"]["x-api-key"] == "<present>"
    elif model == "claude-via-openai":
        assert body["messages"][0] == {"role": "system", "content": "Be brief."}
        assert body["max_completion_tokens"] == 300 or body.get("max_tokens") == 300
    else:
        assert sent["path"].endswith(":generateContent")
        assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
        assert body["generationConfig"]["maxOutputTokens"] == 300


@pytest.mark.parametrize("model", list(ROUTES))
def test_messages_stream(client, model):
    with client.messages.stream(model=model, max_tokens=300,
                                messages=[{"role": "user", "content": "stream it"}]) as s:
        pieces = list(s.text_stream)
        final = s.get_final_message()
    assert len(pieces) > 1, "the text arrives in several deltas"
    assert "".join(pieces) == "Hello from the fake provider. You said: stream it"
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 9


@pytest.mark.parametrize("model", list(ROUTES))
def test_tool_use_round_trip(client, model):
    m = client.messages.create(model=model, max_tokens=300, tools=[WEATHER],
                               messages=[{"role": "user", "content": "weather in Oslo?"}])
    assert m.stop_reason == "tool_use"
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1
    call = uses[0]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert set(call.input) == {"city", "days", "unit"} and call.input["days"] >= 2

    # The result goes back with the id the client got; every backend must see it matched.
    r = client.messages.create(model=model, max_tokens=300, tools=[WEATHER], messages=[
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "12C and rain"}]},
    ])
    assert r.stop_reason == "end_turn"
    assert "12C and rain" in r.content[0].text


@pytest.mark.parametrize("model", list(ROUTES))
def test_streamed_tool_use_assembles(client, model):
    with client.messages.stream(model=model, max_tokens=300, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"},
                                messages=[{"role": "user", "content": "weather?"}]) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    assert "input_json" in events, events
    call = [b for b in final.content if b.type == "tool_use"][0]
    assert call.name == "get_weather"
    assert set(call.input) == {"city", "days", "unit"}
    assert final.stop_reason == "tool_use"


@pytest.mark.parametrize("model", list(ROUTES))
def test_count_tokens(client, model):
    short = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "hi"}])
    long = client.messages.count_tokens(model=model, system="You are terse. " * 50,
                                        messages=[{"role": "user", "content": "hi"}])
    assert short.input_tokens > 0
    assert long.input_tokens > short.input_tokens + 50


def test_stop_sequences(client):
    for model in ROUTES:
        m = client.messages.create(model=model, max_tokens=300, stop_sequences=["fake"],
                                   messages=[{"role": "user", "content": "x"}])
        assert m.content[0].text.rstrip() == "Hello from the", model
        assert m.stop_reason in ("stop_sequence", "end_turn"), model
        if model == "claude-native":
            assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "fake")


def test_errors_are_anthropic_shaped(client):
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-route", max_tokens=10,
                               messages=[{"role": "user", "content": "x"}])
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="claude-native", max_tokens=10,
                               messages=[{"role": "system", "content": "x"}])
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_native_passthrough_keeps_prompt_caching_and_thinking(client, fake):
    """An Anthropic client reaching an Anthropic backend is passed through natively: fields that
    have no OpenAI equivalent (cache_control, thinking) reach the provider untouched, and the
    route's limits still apply."""
    system = [{"type": "text", "text": "A long, reusable system prompt.",
               "cache_control": {"type": "ephemeral"}}]
    m = client.messages.create(
        model="claude-native", max_tokens=300, system=system,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "cached question", "cache_control": {"type": "ephemeral"}}]}])
    assert m.type == "message"
    body = upstream_of(fake, "claude-native")["body"]
    assert body["system"] == system
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["model"] != "claude-native", "the backend's model replaces the route name"
