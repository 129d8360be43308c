"""The commands in the docs, run as written: README.md's quickstart (its curl commands and the
headers and metric lines it shows, and its Python snippet), every curl command in
docs/clients/curl.md, and examples/auto.yaml's cheap/strong choice. The docs address
127.0.0.1:4000, the sidecar's default, so these tests need port 4000; when it is taken they skip
(CI machines have it free)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Sidecar

PORT = 4000
QUICKSTART = REPO / "examples" / "quickstart.yaml"
AUTO = REPO / "examples" / "auto.yaml"


def fenced(path: Path, lang: str) -> list[str]:
    """The fenced code blocks of one language in a markdown file."""
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def commands(block: str) -> list[tuple[str, list[str]]]:
    """Shell commands of a block (continuation lines joined), each with the comment lines that
    follow it (the documented output)."""
    out: list[tuple[str, list[str]]] = []
    current = ""
    for line in block.splitlines():
        if current:
            current += " " + line.strip()
        elif line.startswith("#"):
            if out:
                out[-1][1].append(line[1:].strip())
            continue
        elif line.strip():
            current = line.strip()
        if current and not current.endswith("\\"):
            out.append((current, []))
            current = ""
        elif current:
            current = current[:-1].rstrip()
    return out


def port_free() -> bool:
    with socket.socket() as s:
        # As the sidecar binds: connections of an earlier test left in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", PORT))
            return True
        except OSError:
            return False


def on_port_4000(tmp_path: Path, config: str) -> Sidecar:
    """A sidecar with no --listen (the documented default, 127.0.0.1:4000)."""
    if not port_free():
        pytest.skip(f"port {PORT} is in use here; the documented commands need it (CI has it free)")
    s = Sidecar(tmp_path, config, listen=None, wait=False)
    s.port, s.base, s.url = PORT, f"http://127.0.0.1:{PORT}", f"http://127.0.0.1:{PORT}/v1"
    try:
        s.wait_ready()
    except AssertionError:
        s.stop()
        if "in use" in s.stderr:
            pytest.skip(f"port {PORT} was taken while the sidecar started")
        raise
    return s


def sh(cmd: str) -> str:
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"`{cmd}` exited {r.returncode}: {r.stderr}"
    return r.stdout


def documented(line: str) -> re.Pattern[str]:
    """A documented output line as a pattern: `...` stands for whatever the docs left out."""
    return re.compile(".*".join(re.escape(part) for part in line.split("...")))


def test_readme_quickstart_runs_as_written(tmp_path):
    block = next(b for b in fenced(REPO / "README.md", "sh") if "curl" in b)
    cmds = commands(block)
    assert len(cmds) == 2 and all(c.startswith("curl ") for c, _ in cmds), cmds
    s = on_port_4000(tmp_path, QUICKSTART.read_text())
    try:
        for cmd, expected in cmds:
            assert expected, f"the README shows no output for `{cmd}`"
            got = sh(cmd).splitlines()
            for line in expected:
                assert any(documented(line).fullmatch(g.strip()) for g in got), \
                    f"README says `{cmd}` prints\n  {line}\nbut it printed:\n" + "\n".join(got)

        # The Python snippet right after it, with the SDK the tests pin.
        snippet = next(b for b in fenced(REPO / "README.md", "python") if "OpenAI(" in b)
        r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip(), "the snippet prints the answer"
    finally:
        s.stop()


def test_curl_page_runs_as_written(tmp_path):
    [block] = fenced(REPO / "docs" / "clients" / "curl.md", "sh")
    cmds = [c for c, _ in commands(block)]
    assert len(cmds) >= 6, cmds
    # The page uses the quickstart's `chat` and the auto example's `auto`.
    s = on_port_4000(tmp_path, QUICKSTART.read_text() + "\n---\n" + AUTO.read_text())
    try:
        for cmd in cmds:
            out = sh(cmd)
            if "grep -i '^x-llmesh'" in cmd:
                headers = dict(line.split(": ", 1) for line in out.strip().splitlines())
                assert {"x-llmesh-route", "x-llmesh-backend", "x-llmesh-rule"} <= set(headers), out
            elif '"stream": true' in cmd:
                events = [line[6:] for line in out.splitlines() if line.startswith("data: ")]
                assert events[-1] == "[DONE]", out
                assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                               for e in events[:-1] if json.loads(e)["choices"]), out
            else:
                body = json.loads(out)
                assert body.get("error") is None, (cmd, body)
                kind = body.get("object") or body.get("type")
                path = re.search(r"127\.0\.0\.1:4000(/\S*)", cmd).group(1)
                assert kind == {"/v1/chat/completions": "chat.completion", "/v1/responses": "response",
                                "/v1/messages": "message", "/v1/models": "list"}[path], (cmd, body)
    finally:
        s.stop()


def test_auto_example_picks_cheap_or_strong(tmp_path):
    # The commands in the example's own comments, run as written.
    cmds = [line.strip()[1:].strip() for line in AUTO.read_text().splitlines()
            if line.strip().startswith("#") and "curl " in line]
    assert len(cmds) == 2
    s = on_port_4000(tmp_path, AUTO.read_text())
    try:
        simple, complex_ = (dict(line.split(": ", 1) for line in sh(c).strip().splitlines()) for c in cmds)
        assert simple["x-llmesh-backend"] == "cheap" and simple["x-llmesh-rule"] == "simple"
        assert complex_["x-llmesh-backend"] == "strong" and complex_["x-llmesh-rule"] == "complex"
        assert s.metric("llmesh_requests_total", route="auto", backend="cheap", status_class="2xx") == 1
        assert s.metric("llmesh_requests_total", route="auto", backend="strong", status_class="2xx") == 1

        client = s.client()
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Hi"}],
            extra_headers={"x-llmesh-task": "code"})
        assert (raw.headers["x-llmesh-backend"], raw.headers["x-llmesh-rule"]) == ("strong", "task-heavy")
        long_prompt = "Tell me about the sea. " * 600
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": long_prompt}])
        assert (raw.headers["x-llmesh-backend"], raw.headers["x-llmesh-rule"]) == ("strong", "long-prompt")
        assert raw.parse().choices[0].message.content.startswith("A careful answer from the strong model.")
    finally:
        s.stop()
