"""The official `openai` SDK's Responses API (`client.responses.create`) through the real sidecar
to `provider: openai` backends, which speak that API natively: the request reaches the upstream's
`/v1/responses` as the SDK wrote it (only the model changes), built-in tools and
`previous_response_id` chains work because the upstream runs and stores them, and a route that
mixes backends sends such requests only to the backend that can serve them."""

from __future__ import annotations

import openai
import pytest

from conftest import FAKE_KEY, Sidecar, anthropic, dump, route, upstream

NO_RETRY = {"attempts": 1}
MODEL = "gpt-4.1-2025-04-14"
CITED = "https://example.org/fake-search-result"


def gpt(name: str, base_url: str) -> dict:
    """A backend of provider `openai` (the one that speaks the Responses API) on the fake."""
    return {"name": name, "provider": "openai", "model": MODEL, "baseUrl": base_url,
            "secretRef": {"name": "fake", "key": "api-key"}}


S = {
    "native": "ok,id=rn-native",
    "mixed-claude": "ok,id=rn-mixed-claude",
    "mixed-gpt": "ok,id=rn-mixed-gpt",
    "compat": "ok,id=rn-compat",
    "down": "503,id=rn-down,retry-after=none",
    "down-backup": "ok,id=rn-down-backup",
    "cut": "reset-mid-stream,after=6,id=rn-cut",
}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    config = dump([
        route("native", [gpt("gpt", fake.url(S["native"]))]),
        # Anthropic takes all traffic, OpenAI is the fallback.
        route("mixed", [anthropic("claude", fake.url(S["mixed-claude"])),
                        gpt("gpt", fake.url(S["mixed-gpt"]))], retry=NO_RETRY),
        route("compat", [upstream("compat", fake.url(S["compat"]))]),
        route("openai-down", [gpt("gpt", fake.url(S["down"])),
                              anthropic("claude", fake.url(S["down-backup"]))], retry=NO_RETRY),
        route("cut", [gpt("gpt", fake.url(S["cut"]))], retry=NO_RETRY),
    ])
    s = Sidecar(tmp_path_factory.mktemp("responses-native"), config)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


def last_sent(fake, scenario):
    reqs = fake.requests(S[scenario])
    assert reqs, f"nothing reached the fake for {scenario}"
    return reqs[-1]


def test_a_response_passes_through_unchanged(client, fake):
    raw = client.responses.with_raw_response.create(
        model="native", instructions="Be brief.", input="hello native", store=False,
        include=["reasoning.encrypted_content"], metadata={"team": "a"})
    assert raw.headers["x-llmesh-backend"] == "gpt"
    r = raw.parse()
    assert r.output_text == "Hello from the fake provider. You said: hello native"
    assert r.model == MODEL and r.usage.input_tokens > 0 and r.usage.output_tokens == 9
    req = last_sent(fake, "native")
    assert req["path"].endswith("/v1/responses") and req["op"] == "responses"
    assert req["headers"]["authorization"] == "<present>"
    assert req["body"] == {"model": MODEL, "instructions": "Be brief.", "input": "hello native",
                           "store": False, "include": ["reasoning.encrypted_content"],
                           "metadata": {"team": "a"}}
    assert FAKE_KEY not in str(req)


def test_a_stream_passes_through_event_by_event(client):
    events = list(client.responses.create(model="native", input="stream me", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello from the fake provider. You said: stream me"
    assert events[-1].response.usage.output_tokens == 9


def test_the_stream_helper_assembles_the_final_response(client):
    with client.responses.stream(model="native", input="helper") as s:
        final = s.get_final_response()
    assert final.output_text == "Hello from the fake provider. You said: helper"


def test_a_built_in_tool_goes_to_the_native_backend_only(client, fake):
    for stream in (False, True):
        kw = {"model": "mixed", "input": "good news today",
              "tools": [{"type": "web_search", "search_context_size": "low"}]}
        if stream:
            events = list(client.responses.create(stream=True, **kw))
            assert "response.web_search_call.searching" in [e.type for e in events]
            r = events[-1].response
        else:
            r = client.responses.create(**kw)
        assert r.output[0].type == "web_search_call"
        assert r.output[0].action.query == "good news today"
        assert r.output[1].content[0].annotations[0].url == CITED
        assert last_sent(fake, "mixed-gpt")["body"]["tools"] == kw["tools"]
    assert fake.requests(S["mixed-claude"]) == [], "Anthropic cannot run web_search: never tried"


def test_a_route_without_a_native_backend_refuses_built_in_tools(client, fake):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="compat", input="x", tools=[{"type": "web_search"}])
    assert e.value.code == "unsupported_value"
    assert "web_search" in e.value.message and "natively" in e.value.message
    assert fake.requests(S["compat"]) == []


def test_previous_response_id_chains_through_the_native_backend(client, fake):
    first = client.responses.create(model="native", input="my name is Ada")
    second = client.responses.create(model="native", previous_response_id=first.id,
                                     input="what is my name?")
    assert second.previous_response_id == first.id
    # The upstream resolved the id: it counted the earlier turns, as cached input.
    assert second.usage.input_tokens_details.cached_tokens > 0
    assert second.usage.input_tokens > first.usage.input_tokens
    assert last_sent(fake, "native")["body"]["previous_response_id"] == first.id
    # An id nobody knows: the upstream's own error, as OpenAI words it.
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="native", previous_response_id="resp_unknown", input="x")
    assert e.value.code == "previous_response_not_found"
    assert e.value.body["message"] == "Previous response with id 'resp_unknown' not found."


def test_an_openai_response_id_on_a_mixed_route_skips_the_translated_backend(client, fake):
    first = client.responses.create(model="native", input="remember 42")
    # `mixed` routes to Anthropic first, but only OpenAI knows this id.
    r = client.responses.create(model="mixed", previous_response_id=first.id, input="number?")
    assert r.previous_response_id == first.id
    assert fake.requests(S["mixed-claude"]) == []


def test_openai_down_falls_back_to_anthropic_with_one_valid_response(client):
    raw = client.responses.with_raw_response.create(model="openai-down", input="fallback")
    assert raw.headers["x-llmesh-backend"] == "claude"
    assert raw.headers["x-llmesh-fallback-from"] == "gpt"
    assert raw.parse().output_text == "Hello from the fake provider. You said: fallback"
    events = list(client.responses.create(model="openai-down", input="fallback", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_stream_broken_mid_way_ends_in_an_error_the_sdk_raises(client, gw):
    got = []
    with pytest.raises(openai.APIError) as e:
        for ev in client.responses.create(model="cut", input="cut me", stream=True):
            got.append(ev.type)
    assert "response.output_text.delta" in got, "the upstream's events came first"
    assert "failed after it started" in e.value.message
    assert gw.metric("llmesh_stream_errors_total", route="cut") == 1
