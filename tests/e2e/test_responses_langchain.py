"""The Responses API through the `openai` SDK (plain, streamed, function tools,
`previous_response_id`, structured output, refusals), and `langchain-openai`'s `ChatOpenAI`
(invoke, stream, tool binding, structured output) on chat completions and on /v1/responses."""

from __future__ import annotations

import json

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from conftest import Sidecar, anthropic, dump, mock, route, upstream

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 2}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
ECHO = "Hello from the fake provider. You said: "


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    config = dump([
        route("fake-chat", [upstream("up", fake.url("ok,id=resp"))]),
        route("claude", [anthropic("claude", fake.url("ok,id=resp-claude"))]),
        route("mock-chat", [mock("m1", reply="mock says hello", outputTokens=6)]),
    ])
    s = Sidecar(tmp_path_factory.mktemp("responses"), config)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


# --- the Responses API -------------------------------------------------------------------

@pytest.mark.parametrize("model", ["fake-chat", "claude"])
def test_plain_response(client, fake, model):
    raw = client.responses.with_raw_response.create(
        model=model, instructions="Be brief.", input="plain question", max_output_tokens=200,
        metadata={"ticket": "t-1"})
    r = raw.parse()
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == ECHO + "plain question"
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.metadata == {"ticket": "t-1"}
    assert r.usage.input_tokens > 0 and r.usage.output_tokens == len(r.output_text.split())
    assert raw.headers["x-llmesh-route"] == model
    if model == "fake-chat":
        body = fake.requests("ok,id=resp")[-1]["body"]
        assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "plain question"}]
        assert body["max_completion_tokens"] == 200 and "metadata" not in body


def test_streamed_events_in_documented_order(client):
    events = list(client.responses.create(model="fake-chat", input="stream order", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 3 and "".join(deltas) == ECHO + "stream order"
    done = events[-1].response
    assert done.status == "completed" and done.usage.output_tokens > 0
    assert done.output_text == "".join(deltas)


@pytest.mark.parametrize("model", ["fake-chat", "claude", "mock-chat"])
def test_function_tool_round_trip(client, model):
    r = client.responses.create(model=model, input="weather in Oslo?", tools=[WEATHER])
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.call_id
    assert set(json.loads(call.arguments)) == {"city", "days"}
    r2 = client.responses.create(model=model, tools=[WEATHER], previous_response_id=r.id,
                                 input=[{"type": "function_call_output", "call_id": call.call_id,
                                         "output": "12C and rain"}])
    assert r2.status == "completed"
    assert "12C and rain" in r2.output_text


def test_streamed_function_call(client):
    events = list(client.responses.create(model="fake-chat", input="w", tools=[WEATHER],
                                          tool_choice="required", stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"][0]
    assert json.loads(args) == json.loads(done.arguments) == {"city": "fake", "days": 2}
    assert events[-1].type == "response.completed"


def test_previous_response_id_carries_the_conversation(client, fake):
    first = client.responses.create(model="fake-chat", input="my name is Ada")
    second = client.responses.create(model="fake-chat", previous_response_id=first.id,
                                     input="what is my name?")
    assert second.previous_response_id == first.id
    body = fake.requests("ok,id=resp")[-1]["body"]
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == "my name is Ada"
    assert body["messages"][1]["content"] == first.output_text
    assert client.responses.retrieve(first.id).id == first.id
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="fake-chat", previous_response_id="resp_unknown", input="x")
    assert e.value.body["param"] == "previous_response_id"
    assert e.value.code == "previous_response_not_found"


def test_structured_output_with_text_format(client):
    class Rating(BaseModel):
        title: str
        score: float

    r = client.responses.parse(model="claude", input="rate it", text_format=Rating)
    assert r.output_parsed == Rating(title="fake", score=1.5)


def test_hosted_tools_get_a_clear_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="fake-chat", input="search", tools=[{"type": "web_search"}])
    assert "web_search" in e.value.message and e.value.code == "unsupported_value"


# --- langchain-openai ---------------------------------------------------------------------

def chat_model(gw, **kw) -> ChatOpenAI:
    return ChatOpenAI(base_url=gw.url, api_key="unused", model="fake-chat", max_retries=0,
                      timeout=20, **kw)


@pytest.mark.parametrize("responses_api", [False, True])
def test_langchain_invoke_and_stream(gw, responses_api):
    llm = chat_model(gw, use_responses_api=responses_api)
    msg = llm.invoke("langchain hello")
    assert msg.text == ECHO + "langchain hello"
    assert msg.usage_metadata["output_tokens"] == len(msg.text.split())
    assert msg.response_metadata["model_name"] == "gpt-4o-mini-2024-07-18"
    chunks = list(llm.stream([HumanMessage("langchain stream")]))
    assert len(chunks) > 3
    assert "".join(c.text for c in chunks) == ECHO + "langchain stream"


@pytest.mark.parametrize("responses_api", [False, True])
def test_langchain_tool_binding(gw, responses_api):
    class GetWeather(BaseModel):
        """Current weather for a city."""

        city: str = Field(description="The city")
        days: int = Field(ge=2)

    llm = chat_model(gw, use_responses_api=responses_api).bind_tools([GetWeather])
    ai = llm.invoke("weather in Oslo?")
    assert len(ai.tool_calls) == 1
    call = ai.tool_calls[0]
    assert call["name"] == "GetWeather"
    GetWeather(**call["args"])  # validates
    answer = llm.invoke([HumanMessage("weather in Oslo?"), ai,
                         ToolMessage("12C and rain", tool_call_id=call["id"])])
    assert "12C and rain" in answer.text


def test_langchain_structured_output(gw):
    class Person(BaseModel):
        name: str
        age: int

    p = chat_model(gw).with_structured_output(Person).invoke("who?")
    assert p == Person(name="fake", age=1)
