"""The `openai` SDK against routes backed by Anthropic and Gemini (the fake provider speaking
their own APIs), and fallback across formats: whichever backend answers, each client sees one
consistent response or stream in its own format."""

from __future__ import annotations

import json

import anthropic as anthropic_sdk
import openai
import pytest

from conftest import Sidecar, anthropic, dump, gemini, route, upstream

NO_RETRY = {"attempts": 1}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 2}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
NATIVE = {"claude": "ok,id=x-claude", "gemini": "ok,id=x-gemini"}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    config = dump([
        route("claude", [anthropic("claude", fake.url(NATIVE["claude"]))]),
        route("gemini", [gemini("gemini", fake.gemini_url(NATIVE["gemini"]))]),
        route("gemini3", [gemini("g3", fake.gemini_url("ok,id=x-g3"), model="gemini-3-pro-preview")]),
        # Anthropic overloaded (529) -> OpenAI, and the reverse.
        route("claude-then-openai", [anthropic("claude", fake.url("529,id=x-529,retry-after=none")),
                                     upstream("gpt", fake.url("ok,id=x-529-backup"))], retry=NO_RETRY),
        route("openai-then-claude", [upstream("gpt", fake.url("503,id=x-503,retry-after=none")),
                                     anthropic("claude", fake.url("ok,id=x-503-backup"))], retry=NO_RETRY),
        # Gemini quota (429) -> Anthropic; Gemini safety blocks -> OpenAI.
        route("gemini-then-claude", [gemini("gemini", fake.gemini_url("429,id=x-429,retry-after=none")),
                                     anthropic("claude", fake.url("ok,id=x-429-backup"))], retry=NO_RETRY),
        route("gemini-safety", [gemini("gemini", fake.gemini_url("safety,id=x-safety")),
                                upstream("gpt", fake.url("ok,id=x-safety-backup"))], retry=NO_RETRY),
        route("gemini-safety-answer", [gemini("gemini", fake.gemini_url("safety,block=answer,id=x-safe2")),
                                       upstream("gpt", fake.url("ok,id=x-safe2-backup"))], retry=NO_RETRY),
        # Claude's context window is too small -> Gemini's.
        route("claude-context", [anthropic("claude", fake.url("context-length,id=x-ctx")),
                                 gemini("gemini", fake.gemini_url("ok,id=x-ctx-backup"))], retry=NO_RETRY),
        # Anthropic's stream breaks after message_start (nothing sent yet) or after content.
        route("claude-cut-early", [anthropic("claude", fake.url("reset-mid-stream,after=1,id=x-cut1")),
                                   upstream("gpt", fake.url("ok,id=x-cut1-backup"))], retry=NO_RETRY),
        route("claude-cut-late", [anthropic("claude", fake.url("reset-mid-stream,after=6,id=x-cut6")),
                                  upstream("gpt", fake.url("ok,id=x-cut6-backup"))], retry=NO_RETRY),
        route("gemini-malformed", [gemini("gemini", fake.gemini_url("malformed-json,id=x-bad")),
                                   anthropic("claude", fake.url("ok,id=x-bad-backup"))], retry=NO_RETRY),
        # Retried in place, honouring Gemini's RetryInfo delay (it sends no retry-after header).
        route("gemini-retry", [gemini("gemini", fake.gemini_url("fail-first-1-then-ok,with=429,retry-after=1s,id=x-gr"))],
              retry={"attempts": 2, "backoff": "10ms"}),
        # Retried in place, honouring Anthropic's retry-after.
        route("claude-429", [anthropic("claude", fake.url("fail-first-1-then-ok,with=429,retry-after=1s,id=x-r"))],
              retry={"attempts": 2, "backoff": "10ms"}),
    ])
    s = Sidecar(tmp_path_factory.mktemp("cross"), config)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


@pytest.fixture(scope="module")
def claude_client(gw):
    return anthropic_sdk.Anthropic(base_url=gw.base, api_key="unused", max_retries=0, timeout=20.0)


def sent(fake, scenario):
    reqs = fake.requests(scenario)
    assert reqs, f"nothing reached the fake for {scenario}"
    return reqs[-1]


# --- the openai SDK against Anthropic and Gemini backends ---------------------------------

@pytest.mark.parametrize("model", ["claude", "gemini"])
def test_chat(client, fake, model):
    raw = client.chat.completions.with_raw_response.create(
        model=model, max_tokens=200,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}])
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == "Hello from the fake provider. You said: hi there"
    assert r.choices[0].finish_reason == "stop"
    # The fake counts one token per word; the usage is the provider's, not an estimate.
    assert r.usage.completion_tokens == 9 and r.usage.prompt_tokens > 0
    assert raw.headers["x-llmesh-provider"] == ("anthropic" if model == "claude" else "gemini")
    assert float(raw.headers["x-llmesh-cost-usd"]) > 0, "priced from the provider's usage"
    body = sent(fake, NATIVE[model])["body"]
    if model == "claude":
        assert body["system"] == "Be brief." and body["max_tokens"] == 200
        assert body["messages"] == [{"role": "user", "content": "hi there"}]
    else:
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert body["contents"] == [{"role": "user", "parts": [{"text": "hi there"}]}]


@pytest.mark.parametrize("model", ["claude", "gemini"])
def test_stream_with_usage(client, model):
    chunks = list(client.chat.completions.create(
        model=model, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream me please"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake provider. You said: stream me please"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(text.split())


@pytest.mark.parametrize("model", ["claude", "gemini", "gemini3"])
def test_tools_round_trip(client, model):
    r = client.chat.completions.create(
        model=model, tools=[WEATHER_TOOL], messages=[{"role": "user", "content": "weather in Oslo?"}])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id
    assert json.loads(call.function.arguments) == {"city": "fake", "days": 2}
    r2 = client.chat.completions.create(model=model, tools=[WEATHER_TOOL], messages=[
        {"role": "user", "content": "weather in Oslo?"},
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "12C and rain"},
    ])
    assert r2.choices[0].finish_reason == "stop"
    assert "12C and rain" in r2.choices[0].message.content


@pytest.mark.parametrize("model", ["claude", "gemini"])
def test_streamed_tool_call(client, model):
    name, args, finish = None, "", None
    for c in client.chat.completions.create(model=model, stream=True, tools=[WEATHER_TOOL],
                                            tool_choice="required",
                                            messages=[{"role": "user", "content": "w"}]):
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            name = name or tc.function.name
            args += tc.function.arguments or ""
        finish = c.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert json.loads(args) == {"city": "fake", "days": 2}
    assert finish == "tool_calls"


@pytest.mark.parametrize("model", ["claude", "gemini"])
def test_structured_output(client, model):
    schema = {"type": "object", "properties": {"title": {"type": "string"}, "score": {"type": "number"}},
              "required": ["title", "score"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "rate it"}],
        response_format={"type": "json_schema", "json_schema": {"name": "rating", "schema": schema, "strict": True}})
    assert json.loads(r.choices[0].message.content) == {"title": "fake", "score": 1.5}
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["claude", "gemini"])
def test_responses_api(client, model):
    r = client.responses.create(model=model, instructions="Be brief.", input="responses hi")
    assert r.status == "completed"
    assert r.output_text == "Hello from the fake provider. You said: responses hi"
    assert r.usage.output_tokens == len(r.output_text.split())
    events = list(client.responses.create(model=model, input="responses stream", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello from the fake provider. You said: responses stream"


# --- fallback across formats ---------------------------------------------------------------

def test_anthropic_529_falls_back_to_openai_for_an_openai_client(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="claude-then-openai", messages=[{"role": "user", "content": "who answers"}])
    r = raw.parse()
    assert raw.headers["x-llmesh-backend"] == "gpt"
    assert raw.headers["x-llmesh-fallback-from"] == "claude"
    assert r.choices[0].message.content == "Hello from the fake provider. You said: who answers"
    assert sent(fake, "529,id=x-529,retry-after=none")["answer"] == "529"


def test_anthropic_529_falls_back_to_openai_for_an_anthropic_client(claude_client):
    raw = claude_client.messages.with_raw_response.create(
        model="claude-then-openai", max_tokens=100, messages=[{"role": "user", "content": "who answers"}])
    m = raw.parse()
    assert raw.headers["x-llmesh-fallback-from"] == "claude"
    assert m.type == "message" and m.content[0].text == "Hello from the fake provider. You said: who answers"
    with claude_client.messages.stream(model="claude-then-openai", max_tokens=100,
                                       messages=[{"role": "user", "content": "stream who"}]) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.content[0].text == "Hello from the fake provider. You said: stream who"
    assert final.stop_reason == "end_turn"


def test_openai_503_falls_back_to_anthropic(client, claude_client):
    raw = client.chat.completions.with_raw_response.create(
        model="openai-then-claude", messages=[{"role": "user", "content": "reverse"}])
    assert raw.headers["x-llmesh-backend"] == "claude"
    assert raw.headers["x-llmesh-provider"] == "anthropic"
    assert raw.parse().choices[0].message.content == "Hello from the fake provider. You said: reverse"
    chunks = list(client.chat.completions.create(
        model="openai-then-claude", stream=True, messages=[{"role": "user", "content": "reverse stream"}]))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "Hello from the fake provider. You said: reverse stream"
    m = claude_client.messages.create(model="openai-then-claude", max_tokens=50,
                                      messages=[{"role": "user", "content": "native"}])
    assert m.content[0].text == "Hello from the fake provider. You said: native"


def test_gemini_quota_falls_back_to_anthropic(client):
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-then-claude", messages=[{"role": "user", "content": "quota"}])
    assert raw.headers["x-llmesh-backend"] == "claude"
    assert raw.headers["x-llmesh-fallback-from"] == "gemini"


@pytest.mark.parametrize("model", ["gemini-safety", "gemini-safety-answer"])
@pytest.mark.parametrize("stream", [False, True])
def test_gemini_safety_block_falls_back(client, gw, model, stream):
    before = gw.metric("llmesh_fallbacks_total", route=model)
    if stream:
        with client.chat.completions.with_streaming_response.create(
                model=model, stream=True, messages=[{"role": "user", "content": "blocked?"}]) as raw:
            assert raw.headers["x-llmesh-backend"] == "gpt"
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "blocked?"}])
        assert raw.headers["x-llmesh-backend"] == "gpt"
        text = raw.parse().choices[0].message.content
    assert text == "Hello from the fake provider. You said: blocked?"
    assert gw.metric("llmesh_fallbacks_total", route=model) == before + 1


def test_context_window_falls_back_to_gemini(client):
    raw = client.chat.completions.with_raw_response.create(
        model="claude-context", messages=[{"role": "user", "content": "long"}])
    assert raw.headers["x-llmesh-backend"] == "gemini"
    assert raw.parse().choices[0].message.content == "Hello from the fake provider. You said: long"


def test_anthropic_429_is_retried_after_its_retry_after(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="claude-429", messages=[{"role": "user", "content": "again"}])
    assert raw.headers["x-llmesh-attempts"] == "2"
    reqs = fake.requests("fail-first-1-then-ok,with=429,retry-after=1s,id=x-r")
    assert [r["answer"] for r in reqs] == ["429", "ok"]
    assert reqs[1]["t_ms"] - reqs[0]["t_ms"] >= 900, "the sidecar waited for retry-after"


def test_gemini_429_is_retried_after_its_retry_info_delay(client, fake):
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-retry", messages=[{"role": "user", "content": "again"}])
    assert raw.headers["x-llmesh-attempts"] == "2"
    reqs = fake.requests("fail-first-1-then-ok,with=429,retry-after=1s,id=x-gr")
    assert [r["answer"] for r in reqs] == ["429", "ok"]
    assert reqs[1]["t_ms"] - reqs[0]["t_ms"] >= 900, "the sidecar waited for RetryInfo.retryDelay"


@pytest.mark.parametrize("model", ["claude-cut-early", "gemini-malformed"])
def test_a_stream_broken_before_any_content_fails_over(client, claude_client, model):
    backup = "gpt" if model == "claude-cut-early" else "claude"
    with client.chat.completions.with_streaming_response.create(
            model=model, stream=True, messages=[{"role": "user", "content": "cut early"}]) as raw:
        assert raw.headers["x-llmesh-backend"] == backup
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "Hello from the fake provider. You said: cut early"
    with claude_client.messages.stream(model=model, max_tokens=50,
                                       messages=[{"role": "user", "content": "cut early"}]) as s:
        assert "".join(s.text_stream) == "Hello from the fake provider. You said: cut early"


def test_a_stream_broken_after_content_ends_in_an_error_each_client_sees(client, claude_client):
    got = ""
    with pytest.raises(openai.APIError):
        for c in client.chat.completions.create(model="claude-cut-late", stream=True,
                                                messages=[{"role": "user", "content": "cut late"}]):
            got += c.choices[0].delta.content or "" if c.choices else ""
    assert got.startswith("Hello"), "content came first, then the error"
    got = ""
    with pytest.raises(anthropic_sdk.APIStatusError) as e:
        with claude_client.messages.stream(model="claude-cut-late", max_tokens=50,
                                           messages=[{"role": "user", "content": "cut late"}]) as s:
            for t in s.text_stream:
                got += t
    assert got.startswith("Hello")
    assert e.value.body["type"] == "error"
