"""Fixtures that run the real binaries: the fake provider and llmesh-sidecar on free loopback
ports, the sidecar with a generated LLMRoute config, both torn down after the tests.

The binaries come from `$LLMESH_BIN_DIR` (default: the workspace's `target/debug`); run
`cargo build --bins` first, or use tests/e2e/run.sh which does everything.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import json
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LLMESH_BIN_DIR", REPO / "target" / "debug"))

# A key the sidecar sends to `openai`-provider backends (secretRef {name: fake, key: api-key}).
FAKE_KEY = "sk-e2e-0123456789abcdef"


def binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.exit(f"{path} is missing: run `cargo build --bins` (or tests/e2e/run.sh)", 2)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Fake:
    """The fake provider process (`llmesh-fake-provider`)."""

    def __init__(self, log_dir: Path):
        self.log = open(log_dir / "fake.stderr", "w")
        self.proc = subprocess.Popen(
            [binary("llmesh-fake-provider"), "--listen", "127.0.0.1:0", "--hang-limit", "60s"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline()
        m = re.fullmatch(r"listening on (127\.0\.0\.1:\d+)\n", line)
        assert m, f"unexpected first line from the fake: {line!r}"
        self.addr = m.group(1)

    def base(self, scenario: str) -> str:
        """The URL prefix that selects `scenario` (Azure appends `/openai`)."""
        return f"http://{self.addr}/s/{scenario}"

    def url(self, scenario: str) -> str:
        """An OpenAI-style `baseUrl` (`.../v1`) for `scenario`."""
        return self.base(scenario) + "/v1"

    def gemini_url(self, scenario: str) -> str:
        """A Gemini-style `baseUrl` (`.../v1beta`) for `scenario`."""
        return self.base(scenario) + "/v1beta"

    def requests(self, scenario: str | None = None) -> list[dict[str, Any]]:
        q = "" if scenario is None else "?scenario=" + urllib.request.quote(scenario, safe="")
        status, body = http_get(f"http://{self.addr}/__requests{q}")
        assert status == 200, body
        return json.loads(body)["data"]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def route(name: str, backends: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """An LLMRoute manifest."""
    return {
        "apiVersion": "llmesh.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": name},
        "spec": {"backends": backends, **spec},
    }


def upstream(name: str, base_url: str, model: str = "gpt-4o-mini-2024-07-18", **extra: Any) -> dict[str, Any]:
    """An OpenAI-compatible backend on the fake."""
    return {"name": name, "provider": "openaiCompatible", "model": model, "baseUrl": base_url, **extra}


def anthropic(name: str, base_url: str, model: str = "claude-sonnet-4-5-20250929", **extra: Any) -> dict[str, Any]:
    """An Anthropic Messages backend on the fake (its key comes from env FAKE_API_KEY)."""
    return {"name": name, "provider": "anthropic", "model": model, "baseUrl": base_url,
            "secretRef": {"name": "fake", "key": "api-key"}, **extra}


def gemini(name: str, base_url: str, model: str = "gemini-2.5-flash", **extra: Any) -> dict[str, Any]:
    """A Gemini backend on the fake (its key comes from env FAKE_API_KEY)."""
    return {"name": name, "provider": "gemini", "model": model, "baseUrl": base_url,
            "secretRef": {"name": "fake", "key": "api-key"}, **extra}


def mock(name: str, **behaviour: Any) -> dict[str, Any]:
    """A backend on the sidecar's built-in mock provider."""
    return {"name": name, "provider": "mock", "model": "gpt-4o-mini-2024-07-18", "mock": behaviour}


def dump(manifests: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(manifests, sort_keys=False)


class Sidecar:
    """One `llmesh-sidecar` process serving a config file it watches."""

    def __init__(self, workdir: Path, config: str, args: list[str] | None = None, env: dict[str, str] | None = None,
                 listen: str | None = "auto", wait: bool = True):
        self.workdir = workdir
        self.config = workdir / "routes.yaml"
        self.config.write_text(config)
        self.port = free_port()
        cmd = [binary("llmesh-sidecar"), "--config", str(self.config)]
        if "--access-log" not in (args or []):
            cmd += ["--access-log", "off"]
        if listen == "auto":
            cmd += ["--listen", f"127.0.0.1:{self.port}"]
        elif listen is not None:
            cmd += ["--listen", listen]
        cmd += args or []
        self.stderr_path = workdir / "sidecar.stderr"
        self.stdout_path = workdir / "sidecar.stdout"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LLMESH_")}
        full_env.update({"FAKE_API_KEY": FAKE_KEY, "LLMESH_LOG": "info"})
        full_env.update(env or {})
        with open(self.stderr_path, "w") as err, open(self.stdout_path, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=full_env)
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the sidecar exited with {self.proc.returncode}:\n{self.stderr}")
            try:
                if http_get(self.base + "/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the sidecar did not become ready:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def client(self, **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 20.0)
        return openai.OpenAI(base_url=self.url, api_key="unused-by-the-sidecar", **kw)

    def metrics(self) -> str:
        status, body = http_get(self.base + "/metrics")
        assert status == 200
        return body

    def metric(self, name: str, **labels: str) -> float:
        """The sum of `name` over the series whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            m = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if not m or m.group(1) != name:
                continue
            have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def fake(tmp_path_factory: pytest.TempPathFactory):
    f = Fake(tmp_path_factory.mktemp("fake"))
    yield f
    f.stop()


@pytest.fixture
def start_sidecar(tmp_path_factory: pytest.TempPathFactory):
    """Starts sidecars for one test; every one is stopped afterwards."""
    started: list[Sidecar] = []

    def start(config: str, **kw: Any) -> Sidecar:
        s = Sidecar(tmp_path_factory.mktemp("sidecar"), config, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
