// Plain `fetch` (Node's built-in): JSON, server-sent events read off the body stream, the
// Anthropic Messages endpoint, and error bodies, against the real sidecar.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { mock, route, startSidecar } from '../harness.mjs';

let sidecar;

before(async () => {
  sidecar = await startSidecar([
    route('chat', [mock('m1', { reply: 'fetch says hi', outputTokens: 6, chunkInterval: '5ms' })]),
  ]);
});

after(async () => {
  await sidecar?.stop();
});

const post = (path, body, headers = {}) => fetch(`${sidecar.base}${path}`, {
  method: 'POST',
  headers: { 'content-type': 'application/json', ...headers },
  body: typeof body === 'string' ? body : JSON.stringify(body),
});

/** The `data:` payloads of an SSE body, read incrementally as they arrive. */
async function sse(res) {
  const decoder = new TextDecoder();
  let buf = '';
  const events = [];
  let reads = 0;
  for await (const bytes of res.body) {
    reads += 1;
    buf += decoder.decode(bytes, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
      if (data) events.push(data);
    }
  }
  return { events, reads };
}

test('chat completions with and without /v1', async () => {
  for (const path of ['/v1/chat/completions', '/chat/completions']) {
    const res = await post(path, { model: 'chat', messages: [{ role: 'user', content: 'Hi' }] });
    assert.equal(res.status, 200, path);
    assert.equal(res.headers.get('x-llmesh-backend'), 'm1');
    const body = await res.json();
    assert.equal(body.choices[0].message.content, 'fetch says hi fetch says hi');
  }
});

test('a stream arrives in pieces and ends with [DONE]', async () => {
  const res = await post('/v1/chat/completions', {
    model: 'chat', stream: true, messages: [{ role: 'user', content: 'Hi' }],
  });
  assert.match(res.headers.get('content-type'), /^text\/event-stream/);
  const { events, reads } = await sse(res);
  assert.equal(events.at(-1), '[DONE]');
  assert.ok(reads > 1, 'the body was read in more than one piece');
  const text = events.slice(0, -1).map((e) => JSON.parse(e).choices[0]?.delta?.content ?? '').join('');
  assert.equal(text.trim(), 'fetch says hi fetch says hi');
});

test('the Anthropic Messages endpoint answers in its own format', async () => {
  const res = await post('/v1/messages', {
    model: 'chat', max_tokens: 64, messages: [{ role: 'user', content: 'Hi' }],
  }, { 'x-api-key': 'unused', 'anthropic-version': '2023-06-01' });
  const m = await res.json();
  assert.equal(m.type, 'message');
  assert.equal(m.content[0].type, 'text');
  assert.equal(m.stop_reason, 'end_turn');
});

test('errors are JSON in the endpoint format', async () => {
  let res = await post('/v1/chat/completions', '{not json');
  assert.equal(res.status, 400);
  assert.equal((await res.json()).error.type, 'invalid_request_error');
  res = await post('/v1/messages', { model: 'nope', max_tokens: 5, messages: [{ role: 'user', content: 'x' }] });
  assert.equal(res.status, 404);
  const e = await res.json();
  assert.equal(e.type, 'error');
  assert.equal(e.error.type, 'not_found_error');
});
