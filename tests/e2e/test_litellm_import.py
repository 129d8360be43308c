"""`llmesh-sidecar import litellm`, end to end: a LiteLLM proxy config pointing at the fake
provider is imported, the real sidecar serves the output with the environment variables the
LiteLLM config named, and the official OpenAI SDK sees what LiteLLM's router would do: the
load-balanced name answers from both deployments in about the ratio of their weights, a failing
group is tried 1 + num_retries times and then falls back to the group named in `fallbacks`,
and an alias reaches its group."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from conftest import Sidecar, binary

KEY_VAR = "FAKE_LITELLM_KEY"
KEY = "sk-litellm-e2e-0123456789"


def litellm_config(fake, num_retries: int) -> str:
    return yaml.safe_dump({
        "model_list": [
            # One model_name, two deployments, weights 3:1.
            {"model_name": "chat", "litellm_params": {
                "model": "openai/gpt-4o-mini-2024-07-18", "api_base": fake.url(f"ok,id=lb-a-{num_retries}"),
                "api_key": f"os.environ/{KEY_VAR}", "weight": 3}},
            {"model_name": "chat", "litellm_params": {
                "model": "openai/gpt-4o-mini-2024-07-18", "api_base": fake.url(f"ok,id=lb-b-{num_retries}"),
                "api_key": f"os.environ/{KEY_VAR}", "weight": 1}},
            # A group whose only deployment always fails, and its fallback group.
            {"model_name": "primary", "litellm_params": {
                "model": "openai/gpt-4o-2024-08-06",
                "api_base": fake.url(f"503,retry-after=none,id=down-{num_retries}"),
                "api_key": f"os.environ/{KEY_VAR}"}},
            {"model_name": "backup", "litellm_params": {
                "model": "anthropic/claude-sonnet-4-5-20250929",
                "api_base": fake.base(f"ok,id=backup-{num_retries}"),
                "api_key": f"os.environ/{KEY_VAR}"}},
        ],
        "router_settings": {
            "num_retries": num_retries,
            "fallbacks": [{"primary": ["backup"]}],
            "model_group_alias": {"gpt-4o": "primary"},
        },
        "general_settings": {"master_key": "sk-master-never-copied"},
    })


def imported(tmp_path, text: str) -> str:
    path = tmp_path / "litellm.yaml"
    path.write_text(text)
    r = subprocess.run([binary("llmesh-sidecar"), "import", "litellm", str(path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module", params=[2, 0], ids=["num_retries=2", "num_retries=0"])
def gw(request, fake, tmp_path_factory):
    num_retries = request.param
    work = tmp_path_factory.mktemp(f"litellm-{num_retries}")
    out = imported(work, litellm_config(fake, num_retries))
    assert "sk-master-never-copied" not in out and KEY not in out
    assert KEY_VAR in out  # the header names the variable to export
    s = Sidecar(work, out, env={KEY_VAR: KEY})
    yield s, num_retries
    s.stop()


def test_the_load_balanced_name_answers_from_both_deployments_by_weight(gw, fake):
    s, n = gw
    client = s.client()
    backends = {}
    for _ in range(200):
        raw = client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "Say hello"}])
        assert raw.http_response.status_code == 200
        name = raw.headers["x-llmesh-backend"]
        backends[name] = backends.get(name, 0) + 1
    a = len(fake.requests(f"ok,id=lb-a-{n}"))
    b = len(fake.requests(f"ok,id=lb-b-{n}"))
    assert a + b == 200 and len(backends) == 2, backends
    # 3:1 of 200 is 150:50; a binomial spread of 4 standard deviations (about 6 each) allows 125-175.
    assert 125 <= a <= 175, (a, b)
    # The key the LiteLLM config named reached the provider.
    assert fake.requests(f"ok,id=lb-a-{n}")[0]["headers"]["authorization"] == "<present>"


def test_a_failing_group_is_retried_as_num_retries_says_then_falls_back(gw, fake):
    s, n = gw
    before = len(fake.requests(f"503,retry-after=none,id=down-{n}"))
    raw = s.client().chat.completions.with_raw_response.create(
        model="primary", messages=[{"role": "user", "content": "Say hello"}])
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content
    # The answer comes from the group named in `fallbacks`, an Anthropic deployment.
    assert raw.headers["x-llmesh-backend"].startswith("backup."), raw.headers["x-llmesh-backend"]
    assert raw.headers["x-llmesh-fallback-from"] == "gpt-4o-2024-08-06"
    tried = len(fake.requests(f"503,retry-after=none,id=down-{n}")) - before
    assert tried == 1 + n, tried
    assert len(fake.requests(f"ok,id=backup-{n}")) >= 1


def test_model_group_alias_reaches_its_group(gw, fake):
    s, n = gw
    raw = s.client().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Say hello"}])
    assert raw.http_response.status_code == 200
    assert raw.headers["x-llmesh-backend"].startswith("backup.")
