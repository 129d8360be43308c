// The official `openai` npm SDK against the real sidecar, configured the way LiteLLM documents
// it: a base URL WITHOUT `/v1`, so the SDK calls /chat/completions, /responses, ... directly.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { mock, route, startFake, startSidecar, upstream } from '../harness.mjs';

const ECHO = 'Hello from the fake provider. You said: ';
const WEATHER = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather for a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' }, days: { type: 'integer', minimum: 2 } },
      required: ['city', 'days'],
    },
  },
};

let fake;
let sidecar;
let client;

before(async () => {
  fake = await startFake();
  sidecar = await startSidecar([
    route('fake-chat', [upstream('up', fake.url('ok,id=node-sdk'))]),
    route('mock-embed', [mock('memb')]),
  ]);
  client = new OpenAI({ baseURL: sidecar.base, apiKey: 'sk-unused', maxRetries: 0 });
});

after(async () => {
  await sidecar?.stop();
  fake?.stop();
});

test('chat completions at /chat/completions (no /v1)', async () => {
  const { data, response } = await client.chat.completions
    .create({ model: 'fake-chat', messages: [{ role: 'user', content: 'node sdk' }] })
    .withResponse();
  assert.equal(new URL(response.url).pathname, '/chat/completions');
  assert.equal(response.headers.get('x-llmesh-route'), 'fake-chat');
  assert.equal(data.choices[0].message.content, `${ECHO}node sdk`);
  assert.equal(data.usage.completion_tokens, 9);
  const sent = (await fake.requests('ok,id=node-sdk')).at(-1);
  assert.equal(sent.path, '/s/ok,id=node-sdk/v1/chat/completions');
  assert.equal(sent.body.model, 'gpt-4o-mini-2024-07-18');
});

test('streamed chat with the usage chunk', async () => {
  const stream = await client.chat.completions.create({
    model: 'fake-chat',
    stream: true,
    stream_options: { include_usage: true },
    messages: [{ role: 'user', content: 'stream node' }],
  });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(text, `${ECHO}stream node`);
  assert.ok(chunks.length > 5);
  assert.deepEqual(chunks.at(-1).choices, []);
  assert.equal(chunks.at(-1).usage.completion_tokens, 9);
});

test('tool calls and their results', async () => {
  const r = await client.chat.completions.create({
    model: 'fake-chat', tools: [WEATHER], messages: [{ role: 'user', content: 'weather?' }],
  });
  const call = r.choices[0].message.tool_calls[0];
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(JSON.parse(call.function.arguments), { city: 'fake', days: 2 });
  const r2 = await client.chat.completions.create({
    model: 'fake-chat',
    tools: [WEATHER],
    messages: [
      { role: 'user', content: 'weather?' },
      r.choices[0].message,
      { role: 'tool', tool_call_id: call.id, content: '12C and rain' },
    ],
  });
  assert.match(r2.choices[0].message.content, /12C and rain/);
});

test('responses at /responses, plain and streamed', async () => {
  const { data, response } = await client.responses
    .create({ model: 'fake-chat', input: 'node responses' })
    .withResponse();
  assert.equal(new URL(response.url).pathname, '/responses');
  assert.equal(data.output_text, `${ECHO}node responses`);
  const stream = await client.responses.create({ model: 'fake-chat', input: 'node rstream', stream: true });
  const types = [];
  let text = '';
  for await (const e of stream) {
    types.push(e.type);
    if (e.type === 'response.output_text.delta') text += e.delta;
  }
  assert.equal(types[0], 'response.created');
  assert.equal(types.at(-1), 'response.completed');
  assert.equal(text, `${ECHO}node rstream`);
  const follow = await client.responses.create({
    model: 'fake-chat', previous_response_id: data.id, input: 'and then?',
  });
  assert.equal(follow.previous_response_id, data.id);
});

test('embeddings (the SDK asks for base64 and decodes it)', async () => {
  const r = await client.embeddings.create({ model: 'mock-embed', input: ['a', 'b'], dimensions: 8 });
  assert.equal(r.data.length, 2);
  assert.equal(r.data[0].embedding.length, 8);
  const norm = r.data[0].embedding.reduce((s, x) => s + x * x, 0);
  assert.ok(Math.abs(norm - 1) < 1e-3, `unit vector, got |v|^2 = ${norm}`);
});

test('models and errors', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes('fake-chat') && ids.includes('mock-embed'));
  await assert.rejects(
    client.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404,
  );
});
