#!/usr/bin/env python3
"""Drives traffic through the sidecars and evaluates, through Prometheus' HTTP API, every panel
query of the chart's dashboards and every expression of its rule group; fails naming each one
that returns nothing or lacks a label it groups by.

Usage: check.py PROM_URL SIDECAR_URL[,SIDECAR_URL...] DASHBOARD_DIR RULES_FILE
"""
import glob
import json
import random
import re
import sys
import threading
import time
import urllib.parse
import urllib.request

PROM, SIDECARS, DASH_DIR, RULES = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4]
SUBST = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m", "$namespace": ".*", "$route": ".*"}


def post(url, body, headers=None):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code
    except OSError:
        return 0


def ask(base, model, prompt, user="u", stream=False, headers=None, **extra):
    return post(base + "/v1/chat/completions",
                {"model": model, "stream": stream, "user": user,
                 "messages": [{"role": "user", "content": prompt}], **extra}, headers)


stop = threading.Event()
statuses = {}


def load(base, seed):
    """A low, steady mix: an A/B split with fallbacks and retries, cache hits, misses and
    bypasses, streams (some cut), 5xx, a circuit that opens, a budget that runs out, an unknown
    model."""
    rnd = random.Random(seed)
    i = 0
    while not stop.is_set():
        i += 1
        calls = [
            ("chat", lambda: ask(base, "chat", f"question {rnd.random()}", user=f"user-{rnd.randrange(50)}")),
            ("chat-cached", lambda: ask(base, "chat", "the same question", user="cached-user")),
            ("chat-bypass", lambda: ask(base, "chat", "the same question", user="cached-user",
                                        headers={"cache-control": "no-store"})),
            ("chat-stream", lambda: ask(base, "chat", f"stream {i}", user=f"user-{rnd.randrange(50)}", stream=True,
                                        stream_options={"include_usage": True})),
            ("broken", lambda: ask(base, "broken", f"b {i}")),
            ("doomed", lambda: ask(base, "doomed", f"d {i}", stream=True)),
            ("capped", lambda: ask(base, "capped", f"c {i}")),
            ("providers", lambda: ask(base, "providers", f"p {i}", user=f"user-{rnd.randrange(50)}")),
            ("providers-stream", lambda: ask(base, "providers", f"ps {i}", user=f"user-{rnd.randrange(50)}",
                                             stream=True, stream_options={"include_usage": True})),
            ("unknown", lambda: ask(base, "no-such-model", "x")),
        ]
        for name, call in calls:
            code = call()
            statuses.setdefault(name, {}).setdefault(code, 0)
            statuses[name][code] += 1
        stop.wait(0.3)


def query(expr):
    url = PROM + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        return None, f"HTTP {e.code}: {e.read().decode()[:300]}"
    return body["data"]["result"], None


def split_operands(expr):
    """The operands of an alert condition: the expression cut at comparisons and set operators
    outside brackets, with `bool` and plain numbers left out."""
    parts, depth, cur, i = [], 0, "", 0
    ops = re.compile(r"(>=|<=|==|!=|>|<|\band\b|\bor\b|\bunless\b)")
    while i < len(expr):
        c = expr[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == '"':
            j = expr.index('"', i + 1)
            cur += expr[i:j + 1]
            i = j + 1
            continue
        if depth == 0:
            m = ops.match(expr, i)
            if m:
                parts.append(cur)
                cur, i = "", m.end()
                continue
        cur += c
        i += 1
    parts.append(cur)
    out = []
    for p in parts:
        p = re.sub(r"^\s*bool\b", "", p).strip()
        if p and not re.fullmatch(r"[\d\s.*+/()e-]+", p):
            out.append(p)
    return out


def by_labels(expr):
    labels = set()
    for m in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in m.group(1).split(",") if x.strip())
    return labels - {"le"}


checks = []
for path in sorted(glob.glob(DASH_DIR + "/*.json")):
    dash = json.load(open(path))
    name = path.rsplit("/", 1)[1]
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["definition"])
            assert m, f"{name}: variable {v['name']}: not label_values(metric, label): {v['definition']}"
            expr = f"group by ({m.group(2)}) ({m.group(1)})"
            for k, val in SUBST.items():
                expr = expr.replace(k, val)
            checks.append((f"{name} variable ${v['name']}", expr))
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"]
            for k, val in SUBST.items():
                expr = expr.replace(k, val)
            assert "$" not in expr, f"{name} panel {p['title']!r}: unsubstituted variable in {expr}"
            checks.append((f"{name} panel {p['title']!r} target {t['refId']}", expr))
import yaml  # noqa: E402

doc = yaml.safe_load(open(RULES))
for r in [r for g in doc.get("groups", [doc]) for r in g["rules"]]:
    if "record" in r:
        checks.append((f"rule {r['record']} (expression)", r["expr"]))
        checks.append((f"rule {r['record']} (recorded series)", r["record"]))
    else:
        for n, operand in enumerate(split_operands(r["expr"])):
            checks.append((f"alert {r['alert']} operand {n + 1}", operand))

# The fake providers' answers: every provider of the `providers` route has requests and counted
# (not estimated) tokens of both types, under its GenAI provider name.
for provider in ("openai", "anthropic", "gcp.gemini"):
    for kind in ("input", "output"):
        checks.append((f"route providers: {provider} {kind} tokens from real answers",
                       f'sum by (gen_ai_provider_name, gen_ai_response_model) (llmesh_tokens_total{{route="providers", '
                       f'gen_ai_provider_name="{provider}", type="{kind}", estimated="false"}}) > 0'))
    checks.append((f"route providers: {provider} streams timed per output token",
                   f'sum by (gen_ai_provider_name) (gen_ai_server_time_per_output_token_seconds_count{{route="providers", '
                   f'gen_ai_provider_name="{provider}"}}) > 0'))

todo = checks

threads = [threading.Thread(target=load, args=(b, n), daemon=True) for n, b in enumerate(SIDECARS)]
for t in threads:
    t.start()
time.sleep(8)  # a few scrapes and rule evaluations with traffic under way

failures = {}
deadline = time.monotonic() + 40
pending = list(todo)
while pending and time.monotonic() < deadline:
    still = []
    for what, expr in pending:
        result, err = query(expr)
        if err:
            failures[what] = f"query error: {err}\n    {expr}"
            still.append((what, expr))
            continue
        if not result:
            failures[what] = f"returned nothing\n    {expr}"
            still.append((what, expr))
            continue
        have = set().union(*(s["metric"].keys() for s in result))
        missing = by_labels(expr) - have
        if missing:
            failures[what] = f"no series has label(s) {sorted(missing)} (got {sorted(have)})\n    {expr}"
            still.append((what, expr))
            continue
        failures.pop(what, None)
    pending = still
    if pending:
        time.sleep(2)
stop.set()

print(f"traffic (status: count): {json.dumps(statuses, sort_keys=True)}")
print(f"{len(todo) - len(pending)} of {len(todo)} expressions returned data with the labels they group by")
if pending:
    for what, _ in pending:
        print(f"FAIL {what}: {failures[what]}")
    sys.exit(1)
