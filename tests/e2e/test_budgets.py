"""Budgets against the fake provider, which refuses what the real APIs refuse (a `max_tokens`
above the model's output limit, a missing `max_tokens` on Anthropic): a large budget must
neither break requests nor refuse the ones in flight at once, and a nearly spent one must clamp
to what is left without going over any model's limit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Sidecar, anthropic, dump, gemini, route, upstream

# Output limits of the models below, from the providers' model pages.
LIMITS = {"gpt": 16_384, "claude": 64_000, "gemini": 65_536}


def budget(usd: str) -> dict:
    return {"apiVersion": "llmesh.io/v1alpha1", "kind": "LLMBudget", "metadata": {"name": "team"},
            "spec": {"limit": {"usd": usd}, "period": "day"}}


@pytest.fixture(scope="module")
def gw(fake, tmp_path_factory):
    config = dump([
        route("gpt", [upstream("gpt", fake.url("ok,id=b-gpt"), model="gpt-4o-mini")]),
        route("claude", [anthropic("claude", fake.url("ok,id=b-claude"))]),
        route("gemini", [gemini("gemini", fake.gemini_url("ok,id=b-gemini"))]),
        budget("1000"),
    ])
    s = Sidecar(tmp_path_factory.mktemp("budgets"), config)
    yield s
    s.stop()


def sent_limit(req: dict) -> int | None:
    body = req["body"]
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            return body[key]
    return (body.get("generationConfig") or {}).get("maxOutputTokens")


@pytest.mark.parametrize("model", ["gpt", "claude", "gemini"])
def test_a_large_budget_breaks_nothing_at_concurrency_2(gw, fake, model):
    client = gw.client()

    def ask(_):
        r = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Say hello"}])
        return r.http_response.status_code

    with ThreadPoolExecutor(max_workers=2) as pool:
        statuses = list(pool.map(ask, range(30)))
    assert statuses == [200] * 30
    reqs = fake.requests(f"ok,id=b-{model}")
    assert len(reqs) >= 30
    for req in reqs:
        limit = sent_limit(req)
        # Nothing, or a limit the model takes: never what the whole budget could pay for.
        assert limit is None or limit <= LIMITS[model], req["body"]


def test_a_nearly_spent_budget_clamps_within_the_models_limit(fake, tmp_path):
    # $0.003 pays for 5,000 gpt-4o-mini output tokens: a request without a limit is sent
    # exactly what is left, and the fake (like OpenAI) takes it.
    s = Sidecar(tmp_path, dump([
        route("gpt", [upstream("gpt", fake.url("ok,id=b-tail"), model="gpt-4o-mini")]),
        budget("0.003"),
    ]))
    try:
        r = s.client().chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "Say hello"}], max_tokens=100_000)
        assert r.choices[0].message.content
        limit = sent_limit(fake.requests("ok,id=b-tail")[-1])
        assert limit is not None and 4_000 < limit <= 5_000, limit
    finally:
        s.stop()
