"""The sidecar process itself: config hot reload, bad configs, SIGTERM draining, and the
loopback-only default listener."""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest

from conftest import FAKE_KEY, Sidecar, binary, dump, route, upstream

USER = [{"role": "user", "content": "hello"}]


def one_backend(fake, backend: str, **extra) -> str:
    return dump([route("hot", [upstream(backend, fake.url(f"ok,id=hot-{backend}"), **extra)])])


def backend_of(client) -> str:
    raw = client.chat.completions.with_raw_response.create(model="hot", messages=USER)
    return raw.headers["x-llmesh-backend"]


def test_hot_reload_switches_backend_and_refuses_bad_edits(fake, start_sidecar):
    s = start_sidecar(one_backend(fake, "one"))
    client = s.client()
    assert backend_of(client) == "one"

    s.config.write_text(one_backend(fake, "two"))
    t0 = time.monotonic()
    while backend_of(client) != "two":
        assert time.monotonic() - t0 < 2.5, "the new config was not served within ~2s"
        time.sleep(0.05)
    assert s.metric("llmesh_config_reloads_total", result="ok") == 2  # start + reload

    # An invalid edit: refused, logged naming the field, and the last good config keeps serving.
    s.config.write_text(one_backend(fake, "three", baseUrl="ftp://nowhere"))
    t0 = time.monotonic()
    while s.metric("llmesh_config_reloads_total", result="invalid") < 1:
        assert time.monotonic() - t0 < 2.5, "the invalid edit was not noticed"
        time.sleep(0.05)
    assert "spec.backends[0].baseUrl" in s.stderr
    assert "still serving the last good config" in s.stderr
    assert backend_of(client) == "two"
    assert s.proc.poll() is None

    # Broken YAML too.
    s.config.write_text("apiVersion: [unclosed\n")
    t0 = time.monotonic()
    while s.metric("llmesh_config_reloads_total", result="invalid") < 2:
        assert time.monotonic() - t0 < 2.5
        time.sleep(0.05)
    assert backend_of(client) == "two"


@pytest.mark.parametrize("spec_patch,field", [
    ({"retry": {"attempts": 1}, "fallback": ["x"]}, "fallback"),  # a misspelt field
    ({"retry": {"attempts": "many"}}, "retry.attempts"),
])
def test_bad_config_at_start_exits_non_zero_naming_the_field(fake, tmp_path, spec_patch, field):
    doc = route("bad", [upstream("b", fake.url("ok"))], **spec_patch)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(dump([doc]))
    p = subprocess.run([binary("llmesh-sidecar"), "--config", str(cfg), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "invalid config" in p.stderr and field in p.stderr, p.stderr


def test_unknown_provider_is_refused_at_start(fake, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(dump([route("bad", [{"name": "b", "provider": "openaj", "model": "m"}])]))
    p = subprocess.run([binary("llmesh-sidecar"), "--config", str(cfg), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "provider" in p.stderr and "openaj" in p.stderr, p.stderr


def test_sigterm_lets_an_in_flight_stream_finish(fake, start_sidecar):
    s = start_sidecar(dump([route("slow", [upstream("s", fake.url("slow-chunks,id=drain,interval=100ms,words=12"))])]))
    stream = s.client().chat.completions.create(model="slow", messages=USER, stream=True)
    it = iter(stream)
    first = next(it)
    assert first.choices[0].delta.role == "assistant"
    s.signal(signal.SIGTERM)
    time.sleep(0.2)
    # Draining: no new connections...
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
    # ...but the stream in flight runs to its end.
    rest = list(it)
    text = "".join(c.choices[0].delta.content or "" for c in rest if c.choices)
    assert len(text.split()) == 12
    assert rest[-1].choices[0].finish_reason == "stop"
    assert s.proc.wait(timeout=10) == 0


def test_sigterm_when_idle_exits_zero_quickly(fake, start_sidecar):
    s = start_sidecar(one_backend(fake, "idle"))
    s.signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert s.proc.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 2


def listening_sockets(pid: int) -> set[str]:
    """`ip:port` of the TCP sockets `pid` listens on, from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, v6 in (("tcp", False), ("tcp6", True)):
        with open(f"/proc/{pid}/net/{table}") as f:
            next(f)
            for line in f:
                cols = line.split()
                local, state, inode = cols[1], cols[3], cols[9]
                if state != "0A" or inode not in inodes:  # 0A: LISTEN
                    continue
                ip_hex, port_hex = local.split(":")
                if v6:
                    ip = "[::1]" if ip_hex == "00000000000000000000000001000000" else f"[{ip_hex}]"
                else:
                    ip = socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1])
                found.add(f"{ip}:{int(port_hex, 16)}")
    return found


def test_default_listen_is_loopback_only(fake, start_sidecar):
    # -h: the one-line form (--help puts each bracket on a line of its own).
    help_text = subprocess.run([binary("llmesh-sidecar"), "-h"], capture_output=True, text=True).stdout
    assert "[env: LLMESH_LISTEN=] [default: 127.0.0.1:4000]" in help_text
    with socket.socket() as probe:
        # As the sidecar does: a previous run's connections in TIME_WAIT do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 4000))
        except OSError:
            pytest.skip("port 4000 is taken on this machine")
    s = start_sidecar(one_backend(fake, "default"), listen=None, wait=False)
    s.port, s.base, s.url = 4000, "http://127.0.0.1:4000", "http://127.0.0.1:4000/v1"
    s.wait_ready()
    assert listening_sockets(s.proc.pid) == {"127.0.0.1:4000"}


def test_refuses_a_public_listener_without_client_keys(fake, tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(one_backend(fake, "public"))
    p = subprocess.run([binary("llmesh-sidecar"), "--config", str(cfg), "--listen", "0.0.0.0:0"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode != 0
    assert "refusing to listen on 0.0.0.0:0 without client API keys" in p.stderr


def test_access_log_has_one_line_per_request_and_no_prompt_or_key(fake, start_sidecar):
    backend = {"name": "primary", "provider": "openai", "model": "gpt-4o-mini-2024-07-18",
               "baseUrl": fake.url("ok"), "secretRef": {"name": "fake", "key": "api-key"}}
    s = start_sidecar(dump([route("chat", [backend])]), args=["--access-log", "on"])
    client = s.client()
    secret = [{"role": "user", "content": "the launch code is PURPLE-OCTOPUS-42"}]
    plain = client.chat.completions.with_raw_response.create(model="chat", messages=secret, user="user-7")
    for _ in client.chat.completions.create(model="chat", messages=secret, stream=True):
        pass
    with pytest.raises(Exception):
        client.chat.completions.create(model="no-such-model", messages=secret)
    # Lines are written in batches; SIGTERM flushes what is queued before the process exits.
    assert s.stop() == 0
    text = s.stdout_path.read_text()
    access = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert [a["log"] for a in access] == ["access"] * 3, text
    first, stream, missing = access
    assert first["request_id"] == plain.headers["x-request-id"]
    assert (first["route"], first["backend"], first["provider"]) == ("chat", "primary", "openai")
    assert (first["status"], first["stream"], first["path"]) == (200, False, "/v1/chat/completions")
    assert first["input_tokens"] > 0 and first["output_tokens"] > 0
    assert first["cost_usd"] == plain.headers["x-llmesh-cost-usd"]
    assert stream["stream"] is True and stream["status"] == 200 and stream["output_tokens"] > 0
    assert missing["status"] == 404 and missing["model"] == "no-such-model"
    # Never the prompt, the provider key, or who asked.
    for secret_text in ("PURPLE-OCTOPUS", FAKE_KEY, "user-7"):
        assert secret_text not in text


def test_past_max_in_flight_clients_get_503_with_retry_after_and_the_sdk_retry_succeeds(fake, start_sidecar):
    s = start_sidecar(dump([route("slow", [upstream("s", fake.url("slow-chunks,id=cap,interval=100ms,words=40"))])]),
                      env={"LLMESH_MAX_IN_FLIGHT": "2"})
    streams = [s.client().chat.completions.create(model="slow", messages=USER, stream=True) for _ in range(2)]
    for st in streams:
        assert next(iter(st)).choices[0].delta.role == "assistant"

    # No retries: the refusal itself, fast and in OpenAI's shape.
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as refused:
        s.client().chat.completions.create(model="slow", messages=USER)
    assert time.monotonic() - started < 1.0
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.body["code"] == "overloaded"
    assert "--max-in-flight" in refused.value.body["message"]

    # With the SDK's retries: it waits the second it was told, and gets in once a place frees.
    result = {}

    def call():
        result["r"] = s.client(max_retries=3).chat.completions.create(model="slow", messages=USER, stream=True)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(0.3)
    streams[0].close()
    t.join(timeout=15)
    assert "r" in result, "the retried request was never admitted"
    assert next(iter(result["r"])).choices[0].delta.role == "assistant"
    result["r"].close()
    streams[1].close()
    assert s.metric("llmesh_limit_rejections_total", limit="max_in_flight") >= 2


def test_raises_its_soft_open_files_limit_to_the_hard_one(fake, start_sidecar):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip(f"the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        s = start_sidecar(one_backend(fake, "a"))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{s.proc.pid}/limits").read_text()
    line = next(l for l in limits.splitlines() if l.startswith("Max open files"))
    assert line.split()[3:5] == [str(hard), str(hard)], line
