#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the repository's fixtures and examples.

Run from anywhere: python3 fuzz/seed.py. Each seed is named by the SHA-1 of its bytes (as
libFuzzer names corpus entries), so re-running adds nothing twice. Inputs over 64 KiB are left
out to keep the corpus small; `snapshot_delta` JSON seeds are written by that target itself
from the example configs (see tests/suites/50-fuzz.sh and docs/fuzzing.md).
"""
import glob, hashlib, json, os, sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "sidecar/tests/fixtures")
OUT = os.path.join(REPO, "fuzz/corpus")
MAX = 64 * 1024


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    elif not isinstance(data, bytes):
        data = json.dumps(data, ensure_ascii=False).encode()
    if len(data) > MAX:
        return
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def files(pattern):
    return sorted(glob.glob(os.path.join(FIX, pattern), recursive=True))


def load(path):
    with open(path, "rb") as f:
        return f.read()


def sse(chunks):
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"


def usages(v):
    """Every usage object in a JSON value."""
    if isinstance(v, dict):
        for k, x in v.items():
            if k in ("usage", "usageMetadata") and isinstance(x, dict):
                yield x
            yield from usages(x)
    elif isinstance(v, list):
        for x in v:
            yield from usages(x)


# Event streams: the SSE parser and every stream decoder.
for p in files("**/*.sse"):
    for t in ("sse_split", "stream_decoders"):
        put(t, load(p))
# OpenAI chunk lists and logs, as the event streams OpenAI-compatible servers send.
for p in files("**/*.chunks.json"):
    v = json.loads(load(p))
    chunks = v["chunks"] if isinstance(v, dict) else v
    put("stream_decoders", sse(chunks))
for p in files("messages/streams/*.in"):
    lines = [l for l in load(p).decode().splitlines() if l.strip() and not l.startswith("#")]
    put("stream_decoders", "".join(f"data: {l}\n\n" for l in lines))
# Whole answers: each provider's, and OpenAI's.
for p in files("**/*.response.json") + files("**/resp_*.openai.json"):
    put("answer_decoders", load(p))
for p in files("messages/responses/*.json") + files("responses/*.json"):
    v = json.loads(load(p))
    for k in ("openai", "chat_response", "response"):
        if isinstance(v.get(k), dict):
            put("answer_decoders", v[k])
# Usage objects from every fixture.
for p in files("**/*.json"):
    try:
        v = json.loads(load(p))
    except ValueError:
        continue
    for u in usages(v):
        put("usage_readers", u)
put("usage_readers", {"input_tokens": 2**64 - 1, "cache_read_input_tokens": 1})
put("usage_readers", {"prompt_tokens": 2**64 - 1, "completion_tokens": 2**64 - 1})
# Requests: chat bodies (the splicer reads the same), Messages and Responses bodies.
for p in files("**/req_*.openai.json"):
    for t in ("ingress_chat", "splice"):
        put(t, load(p))
for p in files("messages/requests/*.json"):
    put("ingress_messages", load(p))
    put("splice", load(p))
for p in files("messages/responses/*.json"):
    v = json.loads(load(p))
    if isinstance(v.get("request"), dict):
        put("ingress_messages", v["request"])
for p in files("responses/*.json"):
    v = json.loads(load(p))
    if isinstance(v.get("request"), dict):
        put("ingress_responses", v["request"])
        put("splice", v["request"])
for p in files("responses_native/*.json"):
    v = json.loads(load(p))
    if isinstance(v, dict) and "input" in v:
        put("ingress_responses", v)
# Configs: every example and test config with llmesh manifests.
configs = sorted(
    glob.glob(os.path.join(REPO, "examples/**/*.yaml"), recursive=True)
    + [os.path.join(REPO, "tests/prometheus/routes.yaml")]
)
for p in configs:
    for t in ("config_compile", "snapshot_delta"):
        put(t, load(p))
for t in sorted(os.listdir(OUT)):
    n = len(os.listdir(os.path.join(OUT, t)))
    print(f"{t}: {n} seeds", file=sys.stderr)
