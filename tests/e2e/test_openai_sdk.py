"""The official `openai` Python SDK against the sidecar: the features clients use, through the
built-in mock and through the fake provider over real HTTP."""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request

import openai
import pytest

from conftest import Sidecar, dump, mock, route, upstream

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 2},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    config = dump([
        route("mock-chat", [mock("m1", reply="mock says hello", outputTokens=6)], aliases=["gpt-4o-mini"]),
        route("fake-chat", [upstream("up", fake.url("ok,id=chat"))]),
        route("fake-fast", [upstream("fast", fake.url("fast"))]),
        route("fake-keyed", [{"name": "keyed", "provider": "openai", "model": "gpt-4o-mini",
                              "baseUrl": fake.url("ok,id=keyed"),
                              "secretRef": {"name": "fake", "key": "api-key"}}]),
        route("fake-azure", [{"name": "az", "provider": "azure", "model": "gpt-4o-mini",
                              "baseUrl": fake.base("ok,id=azure") + "/openai",
                              "azure": {"deployment": "prod-4o-mini", "apiVersion": "2024-10-21"},
                              "secretRef": {"name": "fake", "key": "api-key"}}]),
        route("fake-embed", [upstream("emb", fake.url("ok,id=embed"), model="text-embedding-3-small")]),
        route("mock-embed", [mock("memb")]),
        route("fake-complete", [upstream("cmp", fake.url("ok,id=complete"), model="gpt-3.5-turbo-instruct")]),
    ])
    s = Sidecar(tmp_path_factory.mktemp("gw"), config)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


def last_upstream(fake, scenario):
    reqs = fake.requests(scenario)
    assert reqs, f"nothing reached the fake for {scenario}"
    return reqs[-1]


# --- chat ---------------------------------------------------------------------------------

def test_chat_through_the_mock(client):
    raw = client.chat.completions.with_raw_response.create(
        model="mock-chat", messages=[{"role": "user", "content": "hi"}])
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "mock says hello mock says hello"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 6 and r.usage.prompt_tokens > 0
    assert raw.headers["x-llmesh-route"] == "mock-chat"
    assert raw.headers["x-llmesh-backend"] == "m1"
    assert raw.headers["x-llmesh-provider"] == "mock"
    assert raw.headers["x-request-id"]


def test_alias_reaches_the_route(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-llmesh-route"] == "mock-chat"


def test_chat_through_the_fake_rewrites_only_the_model(client, fake):
    r = client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "ping one two"}],
        n=2, stop=["zzz"], seed=42, temperature=0.3,
        extra_body={"my_vendor_flag": {"nested": [1, 2, 3]}, "logit_bias": {"50256": -100}},
        extra_headers={"x-request-id": "e2e-req-1"},
    )
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[1].message.content == "Hello from the fake provider. You said: ping one two"
    sent = last_upstream(fake, "ok,id=chat")
    body = sent["body"]
    assert body["model"] == "gpt-4o-mini-2024-07-18"  # the backend's model, not the route name
    assert body["n"] == 2 and body["stop"] == ["zzz"] and body["seed"] == 42 and body["temperature"] == 0.3
    assert body["my_vendor_flag"] == {"nested": [1, 2, 3]}
    assert body["logit_bias"] == {"50256": -100}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["path"] == "/s/ok,id=chat/v1/chat/completions"
    # No provider key is configured for this backend, and the client's own key never leaks upstream.
    assert "authorization" not in sent["headers"]


def test_stop_sequences_are_applied_upstream(client):
    r = client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "x"}], stop=["fake"])
    assert r.choices[0].message.content == "Hello from the "
    assert r.choices[0].finish_reason == "stop"


def test_openai_provider_sends_the_key_as_bearer(client, fake):
    client.chat.completions.create(model="fake-keyed", messages=[{"role": "user", "content": "k"}])
    sent = last_upstream(fake, "ok,id=keyed")
    assert sent["headers"]["authorization"] == "<present>"
    assert "api-key" not in sent["headers"]


def test_azure_url_shape_and_api_key_header(client, fake):
    chunks = list(client.chat.completions.create(
        model="fake-azure", messages=[{"role": "user", "content": "azure please"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake provider. You said: azure please"
    r = client.chat.completions.create(model="fake-azure", messages=[{"role": "user", "content": "again"}])
    assert r.model == "gpt-4o-mini-2024-07-18"
    sent = last_upstream(fake, "ok,id=azure")
    assert sent["path"] == "/s/ok,id=azure/openai/deployments/prod-4o-mini/chat/completions"
    assert sent["query"] == "api-version=2024-10-21"
    assert sent["headers"]["api-key"] == "<present>"
    assert "authorization" not in sent["headers"]
    assert sent["answer"] == "ok"


@pytest.mark.parametrize("model", ["mock-chat", "fake-chat"])
def test_stream_without_usage_has_no_usage_chunk(client, fake, model):
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "stream me"}], stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "a usage-only chunk leaked to a client that did not ask"
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    if model == "fake-chat":
        assert text == "Hello from the fake provider. You said: stream me"
        # The sidecar asks upstream for usage anyway, to count tokens.
        body = last_upstream(fake, "ok,id=chat")["body"]
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    else:
        assert text.split() == ["mock", "says", "hello"] * 2


@pytest.mark.parametrize("model", ["mock-chat", "fake-chat"])
def test_stream_with_usage_ends_with_the_usage_chunk(client, model):
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count me"}], stream=True,
        stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert sum(1 for c in chunks if c.usage is not None) == 1
    content_chunks = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert last.usage.completion_tokens == content_chunks


@pytest.mark.parametrize("model", ["mock-chat", "fake-chat"])
def test_tool_calls_have_schema_shaped_arguments(client, model):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "weather in Oslo?"}], tools=[WEATHER_TOOL])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    args = json.loads(call.function.arguments)
    assert set(args) == {"city", "days", "unit"}
    assert isinstance(args["city"], str) and isinstance(args["days"], int) and args["days"] >= 2
    assert args["unit"] in ("celsius", "fahrenheit")

    # The tool's result goes back and the model answers in text.
    r2 = client.chat.completions.create(model=model, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "12C and rain"},
    ])
    assert r2.choices[0].finish_reason == "stop"
    assert "12C and rain" in r2.choices[0].message.content


@pytest.mark.parametrize("model", ["mock-chat", "fake-chat"])
def test_streamed_tool_calls_assemble(client, model):
    args, name = "", None
    for c in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "w"}], tools=[WEATHER_TOOL], stream=True):
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            name = name or tc.function.name
            args += tc.function.arguments or ""
    assert name == "get_weather"
    assert set(json.loads(args)) == {"city", "days", "unit"}


@pytest.mark.parametrize("model", ["mock-chat", "fake-chat"])
def test_json_schema_response_format(client, model):
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "score": {"type": "number"},
                                               "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["title", "score", "tags"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "rate it"}],
        response_format={"type": "json_schema", "json_schema": {"name": "rating", "schema": schema, "strict": True}})
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"title", "score", "tags"}
    assert isinstance(data["score"], (int, float)) and isinstance(data["tags"], list)


def test_fast_scenario_is_valid_openai_for_benchmarks(client, fake):
    r = client.chat.completions.create(model="fake-fast", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == "Hello from fast." and r.usage.total_tokens == 12
    chunks = list(client.chat.completions.create(
        model="fake-fast", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from fast."
    assert chunks[-1].usage.completion_tokens == 3
    assert fake.requests("fast") == []  # fast mode keeps no log


def test_n_returns_n_choices_from_the_mock(client):
    r = client.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "x"}], n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]


# --- embeddings, completions, models -----------------------------------------------------

@pytest.mark.parametrize("model", ["mock-embed", "fake-embed"])
def test_embeddings_default_base64(client, fake, model):
    r = client.embeddings.create(model=model, input=["alpha", "beta"], dimensions=16)
    assert [d.index for d in r.data] == [0, 1]
    vec = r.data[0].embedding
    assert len(vec) == 16 and all(isinstance(x, float) for x in vec)
    assert abs(sum(x * x for x in vec) - 1.0) < 1e-3  # unit vectors: decoded correctly from base64
    assert r.data[0].embedding != r.data[1].embedding
    if model == "fake-embed":
        body = last_upstream(fake, "ok,id=embed")["body"]
        assert body["encoding_format"] == "base64"  # what the SDK asks for by default
        assert body["model"] == "text-embedding-3-small"


def test_embeddings_float_and_base64_agree(client):
    f = client.embeddings.create(model="fake-embed", input="same", dimensions=8, encoding_format="float")
    raw = client.embeddings.with_raw_response.create(
        model="fake-embed", input="same", dimensions=8, encoding_format="base64")
    b64 = json.loads(raw.text)["data"][0]["embedding"]
    floats = struct.unpack("<8f", base64.b64decode(b64))
    assert floats == pytest.approx(f.data[0].embedding, rel=1e-6)


def test_legacy_completions(client, fake):
    r = client.completions.create(model="fake-complete", prompt="Say this", max_tokens=50)
    assert r.object == "text_completion"
    assert r.choices[0].text == "Hello from the fake provider. You said: Say this"
    assert r.usage.completion_tokens == 9
    body = last_upstream(fake, "ok,id=complete")["body"]
    assert body["prompt"] == "Say this" and body["model"] == "gpt-3.5-turbo-instruct"
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="fake-complete", prompt="Stream this", stream=True) if c.choices)
    assert text.startswith("Hello from the fake provider. You said:")


def test_legacy_completions_through_the_mock(client):
    r = client.completions.create(model="mock-chat", prompt="hello")
    assert r.object == "text_completion"
    assert r.choices[0].text.split() == ["mock", "says", "hello"] * 2


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {"mock-chat", "gpt-4o-mini", "fake-chat", "fake-embed", "fake-azure"} <= ids
    assert client.models.retrieve("fake-chat").id == "fake-chat"


# --- errors --------------------------------------------------------------------------------

def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404
    assert "mock-chat" in e.value.message  # the error lists the models that exist
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_missing_messages_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.post("/chat/completions", body={"model": "mock-chat"}, cast_to=object)
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mock-chat", messages=[])


def test_invalid_json_is_a_bad_request(gw):
    req = urllib.request.Request(gw.url + "/chat/completions", data=b"{not json", method="POST",
                                 headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400
    assert json.loads(e.value.read())["error"]["type"] == "invalid_request_error"
