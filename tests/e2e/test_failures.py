"""Every failure mode of the fake provider, through the sidecar, seen by the `openai` SDK:
retries, fallbacks, timeouts, broken streams, and the metrics that count them."""

from __future__ import annotations

import time

import openai
import pytest

from conftest import Sidecar, dump, mock, route, upstream

USER = [{"role": "user", "content": "are you there"}]
BACKUP_TEXT = "Hello from the fake provider. You said: are you there"
NO_RETRY = {"attempts": 1}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    def with_backup(name, primary, **spec):
        spec.setdefault("retry", NO_RETRY)
        return route(name, [upstream("primary", fake.url(primary)),
                            upstream("backup", fake.url(f"ok,id={name}-backup"))], **spec)

    config = dump([
        *[with_backup(f"fb-{s}", f"{s},id=fb-{s},retry-after=none") for s in (500, 502, 503, 504)],
        with_backup("fb-stream", "503,id=fb-stream,retry-after=none"),
        with_backup("retry-429", "429,id=retry-429,retry-after=300ms",
                    retry={"attempts": 2, "backoff": "10ms", "maxBackoff": "20ms"}),
        with_backup("long-429", "429,id=long-429,retry-after=30s",
                    retry={"attempts": 3, "backoff": "10ms", "maxRetryAfter": "1s"}),
        route("all-429", [upstream("a", fake.url("429,id=all-a,retry-after=2s")),
                          upstream("b", fake.url("429,id=all-b,retry-after=3s"))], retry=NO_RETRY),
        with_backup("hang-stream", "hang-before-first-byte,id=hang-stream", timeouts={"firstToken": "500ms"}),
        with_backup("hang-full", "hang,id=hang-full", timeouts={"firstToken": "500ms"}),
        with_backup("hang-body", "hang-before-first-byte,id=hang-body", timeouts={"attempt": "700ms"}),
        route("slow", [upstream("slow", fake.url("slow-chunks,id=slow,interval=150ms,words=6"))]),
        with_backup("malformed", "malformed-json,id=malformed"),
        with_backup("wrong-ct", "wrong-content-type,id=wrong-ct"),
        route("ctx", [upstream("small", fake.url("context-length,id=ctx"), contextWindow=8000),
                      upstream("large", fake.url("ok,id=ctx-large"), contextWindow=200000)], retry=NO_RETRY),
        route("ctx-only", [upstream("small", fake.url("context-length,id=ctx-only"))]),
        route("auth", [{"name": "primary", "provider": "openai", "model": "gpt-4o-mini",
                        "baseUrl": fake.url("401,id=auth"), "secretRef": {"name": "fake", "key": "api-key"}},
                       upstream("backup", fake.url("ok,id=auth-backup"))], retry=NO_RETRY),
        with_backup("flaky", "fail-first-2-then-ok,id=flaky,retry-after=none",
                    retry={"attempts": 3, "backoff": "10ms", "maxBackoff": "20ms"}),
        with_backup("reset", "reset-mid-stream,id=reset,after=4,interval=20ms"),
        route("mock-reset", [mock("m", outputTokens=10, failure={"status": 0, "midStreamAfterChunks": 3})]),
    ])
    s = Sidecar(tmp_path_factory.mktemp("failures"), config)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(gw):
    return gw.client()


def chat(client, model, **kw):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=USER, **kw)
    return raw, raw.parse()


def stream_text(stream):
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def assert_fell_back(raw, r, frm="primary", to="backup"):
    assert raw.headers["x-llmesh-backend"] == to
    assert raw.headers["x-llmesh-fallback-from"] == frm
    assert r.choices[0].message.content == BACKUP_TEXT


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_falls_back(gw, client, fake, status):
    raw, r = chat(client, f"fb-{status}")
    assert_fell_back(raw, r)
    assert raw.headers["x-llmesh-attempts"] == "2"
    assert [q["answer"] for q in fake.requests(f"{status},id=fb-{status},retry-after=none")] == [str(status)]
    labels = dict(route=f"fb-{status}", from_backend="primary", to_backend="backup", reason="status_5xx")
    assert gw.metric("llmesh_fallbacks_total", **labels) == 1
    assert gw.metric("llmesh_upstream_errors_total", route=f"fb-{status}", backend="primary",
                     reason="status_5xx") == 1


def test_stream_falls_back_before_the_first_byte(client):
    raw = client.chat.completions.with_raw_response.create(model="fb-stream", messages=USER, stream=True)
    assert raw.headers["x-llmesh-fallback-from"] == "primary"
    assert raw.headers["x-llmesh-backend"] == "backup"
    assert stream_text(raw.parse()) == BACKUP_TEXT


def test_429_is_retried_after_retry_after_then_falls_back(gw, client, fake):
    raw, r = chat(client, "retry-429")
    assert_fell_back(raw, r)
    assert raw.headers["x-llmesh-attempts"] == "3"
    hits = fake.requests("429,id=retry-429,retry-after=300ms")
    assert len(hits) == 2
    assert hits[1]["t_ms"] - hits[0]["t_ms"] >= 290, "the retry did not wait for retry-after-ms"
    assert gw.metric("llmesh_retries_total", route="retry-429", backend="primary", reason="status_429") == 1
    assert gw.metric("llmesh_fallbacks_total", route="retry-429", from_backend="primary",
                     to_backend="backup", reason="status_429") == 1


def test_retry_after_beyond_the_limit_moves_on_and_keeps_away(client, fake):
    t0 = time.monotonic()
    raw, r = chat(client, "long-429")
    assert time.monotonic() - t0 < 2
    assert_fell_back(raw, r)
    # The provider asked for 30s: the sidecar does not call it again meanwhile.
    raw, r = chat(client, "long-429")
    assert raw.headers["x-llmesh-backend"] == "backup"
    assert len(fake.requests("429,id=long-429,retry-after=30s")) == 1


def test_all_backends_429_is_a_rate_limit_error(client, fake):
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="all-429", messages=USER)
    assert e.value.status_code == 429
    assert e.value.response.headers["retry-after"] == "2"  # the soonest any backend allows
    assert len(fake.requests("429,id=all-a,retry-after=2s")) == 1
    assert len(fake.requests("429,id=all-b,retry-after=3s")) == 1


def test_hang_before_first_byte_times_out_then_falls_back(gw, client):
    t0 = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="hang-stream", messages=USER, stream=True)
    text = stream_text(raw.parse())
    elapsed = time.monotonic() - t0
    assert 0.45 <= elapsed < 3, elapsed
    assert text == BACKUP_TEXT
    assert raw.headers["x-llmesh-fallback-from"] == "primary"
    assert gw.metric("llmesh_fallbacks_total", route="hang-stream", reason="timeout") == 1


def test_hang_without_an_answer_times_out_then_falls_back(gw, client):
    t0 = time.monotonic()
    raw, r = chat(client, "hang-full")
    assert 0.45 <= time.monotonic() - t0 < 3
    assert_fell_back(raw, r)
    assert gw.metric("llmesh_upstream_errors_total", route="hang-full", backend="primary", reason="timeout") == 1


def test_headers_then_silence_hits_the_attempt_timeout_then_falls_back(gw, client):
    t0 = time.monotonic()
    raw, r = chat(client, "hang-body")
    assert 0.65 <= time.monotonic() - t0 < 3
    assert_fell_back(raw, r)
    assert gw.metric("llmesh_upstream_errors_total", route="hang-body", backend="primary", reason="timeout") == 1


def test_answer_cut_in_half_falls_back(gw, client):
    raw, r = chat(client, "reset")  # not streamed: the JSON body breaks off mid-way
    assert_fell_back(raw, r)
    assert gw.metric("llmesh_upstream_errors_total", route="reset", backend="primary", reason="reset") == 1


def test_slow_chunks_are_relayed_as_they_arrive(client):
    t0 = time.monotonic()
    arrivals, text = [], ""
    for c in client.chat.completions.create(model="slow", messages=USER, stream=True):
        if c.choices and c.choices[0].delta.content:
            arrivals.append(time.monotonic() - t0)
            text += c.choices[0].delta.content
    assert text.split() == "Hello from the fake provider. You".split()
    assert len(arrivals) == 6
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    # Chunks 150ms apart upstream arrive ~150ms apart here: nothing buffers the stream.
    assert min(gaps) >= 0.1, gaps
    assert arrivals[-1] - arrivals[0] >= 0.7


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["malformed", "wrong-ct"])
def test_broken_answers_fall_back(gw, client, model, stream):
    before = gw.metric("llmesh_fallbacks_total", route=model, reason="malformed")
    raw = client.chat.completions.with_raw_response.create(model=model, messages=USER, stream=stream)
    assert raw.headers["x-llmesh-fallback-from"] == "primary"
    assert raw.headers["x-llmesh-backend"] == "backup"
    r = raw.parse()
    assert (stream_text(r) if stream else r.choices[0].message.content) == BACKUP_TEXT
    assert gw.metric("llmesh_fallbacks_total", route=model, reason="malformed") == before + 1


def test_context_length_falls_back_to_a_larger_window(gw, client):
    raw, r = chat(client, "ctx")
    assert raw.headers["x-llmesh-backend"] == "large"
    assert raw.headers["x-llmesh-fallback-from"] == "small"
    assert gw.metric("llmesh_fallbacks_total", route="ctx", reason="context_window") == 1


def test_context_length_with_nowhere_to_go_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="ctx-only", messages=USER)
    assert e.value.code == "context_length_exceeded"


def test_401_takes_the_backend_out_of_rotation(gw, client, fake):
    raw, r = chat(client, "auth")
    assert_fell_back(raw, r)
    assert gw.metric("llmesh_fallbacks_total", route="auth", reason="auth") == 1
    hits = fake.requests("401,id=auth")
    assert len(hits) == 1 and hits[0]["headers"]["authorization"] == "<present>"
    raw, r = chat(client, "auth")
    assert raw.headers["x-llmesh-backend"] == "backup"
    assert len(fake.requests("401,id=auth")) == 1, "a backend with a rejected key was called again"


def test_transient_failures_are_retried_on_the_same_backend(gw, client, fake):
    raw, r = chat(client, "flaky")
    assert raw.headers["x-llmesh-backend"] == "primary"
    assert "x-llmesh-fallback-from" not in raw.headers
    assert raw.headers["x-llmesh-attempts"] == "3"
    assert r.choices[0].message.content == BACKUP_TEXT
    answers = [q["answer"] for q in fake.requests("fail-first-2-then-ok,id=flaky,retry-after=none")]
    assert answers == ["503", "503", "ok"]
    assert gw.metric("llmesh_retries_total", route="flaky", backend="primary", reason="status_5xx") == 2


@pytest.mark.parametrize("model,backend", [("reset", "primary"), ("mock-reset", "m")])
def test_mid_stream_reset_raises_in_the_sdk(gw, client, model, backend):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=USER, stream=True)
    # After the first byte there is no failover: the client must learn the stream broke.
    assert raw.headers["x-llmesh-backend"] == backend
    got = []
    with pytest.raises(openai.APIError) as e:
        for c in raw.parse():
            if c.choices and c.choices[0].delta.content:
                got.append(c.choices[0].delta.content)
    assert got, "the stream broke before any content"
    assert "llmesh" in e.value.message and "stream" in e.value.message
    assert gw.metric("llmesh_stream_errors_total", route=model, backend=backend) == 1
