// The Vercel AI SDK (`ai` + `@ai-sdk/openai`) against the real sidecar, with the built-in mock
// and the fake provider as upstreams.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { createOpenAI } from '@ai-sdk/openai';
import { generateObject, generateText, stepCountIs, streamText, tool } from 'ai';
import { z } from 'zod';

import { mock, route, startFake, startSidecar, upstream } from '../harness.mjs';

const WEATHER = z.object({
  city: z.string(),
  days: z.number().int().min(2),
  unit: z.enum(['celsius', 'fahrenheit']),
});

let fake;
let sidecar;
let provider;

before(async () => {
  fake = await startFake();
  sidecar = await startSidecar([
    route('mock-chat', [mock('m1', { reply: 'mock says hello', outputTokens: 6 })]),
    route('fake-chat', [upstream('up', fake.url('ok,id=node'))]),
  ]);
  provider = createOpenAI({ baseURL: sidecar.url, apiKey: 'x' });
});

after(async () => {
  await sidecar?.stop();
  fake?.stop();
});

// The OpenAI APIs the SDK can speak: `provider.chat(model)` uses chat completions; the
// documented default `provider(model)` (like `provider.responses(model)`) uses the Responses
// API, /v1/responses. Every test below runs against both.
const APIS = [
  { name: 'chat completions', model: (p, m) => p.chat(m), path: '/v1/chat/completions' },
  { name: 'responses', model: (p, m) => p(m), path: '/v1/responses' },
];

for (const api of APIS) {
  describe(api.name, { skip: api.skip }, () => {
    const model = (name) => api.model(provider, name);

    test('generateText through the mock', async () => {
      const seen = [];
      const spy = createOpenAI({
        baseURL: sidecar.url,
        apiKey: 'x',
        fetch: (url, init) => { seen.push(new URL(url).pathname); return fetch(url, init); },
      });
      const r = await generateText({ model: api.model(spy, 'mock-chat'), prompt: 'hi' });
      assert.deepEqual(seen, [api.path], 'the SDK called the API this suite is about');
      assert.equal(r.text, 'mock says hello mock says hello');
      assert.equal(r.finishReason, 'stop');
      assert.equal(r.usage.outputTokens, 6);
      assert.ok(r.usage.inputTokens > 0);
      assert.equal(r.response.headers['x-llmesh-backend'], 'm1');
    });

    test('generateText through the fake sends the backend model upstream', async () => {
      const r = await generateText({ model: model('fake-chat'), system: 'be brief', prompt: 'node ping' });
      assert.equal(r.text, 'Hello from the fake provider. You said: node ping');
      const sent = (await fake.requests('ok,id=node')).at(-1).body;
      assert.equal(sent.model, 'gpt-4o-mini-2024-07-18');
      // Chat sends a string; the Responses API's input_text parts arrive as text parts.
      const last = sent.messages.at(-1);
      const text = typeof last.content === 'string' ? last.content : last.content.map((p) => p.text).join('');
      assert.equal(last.role, 'user');
      assert.equal(text, 'node ping');
    });

    test('streamText collects the streamed text and usage', async () => {
      const r = streamText({ model: model('fake-chat'), prompt: 'stream this please' });
      const parts = [];
      for await (const t of r.textStream) parts.push(t);
      assert.ok(parts.length > 5, `expected many deltas, got ${parts.length}`);
      assert.equal(parts.join(''), 'Hello from the fake provider. You said: stream this please');
      assert.equal(await r.finishReason, 'stop');
      assert.equal((await r.usage).outputTokens, 10);
    });

    test('streamText through the mock', async () => {
      const r = streamText({ model: model('mock-chat'), prompt: 'hi' });
      let text = '';
      for await (const t of r.textStream) text += t;
      assert.equal(text, 'mock says hello mock says hello');
      assert.equal((await r.usage).outputTokens, 6);
    });

    test('a zod-typed tool gets a schema-shaped tool call', async () => {
      const r = await generateText({
        model: model('mock-chat'),
        prompt: 'weather in Oslo?',
        tools: { weather: tool({ description: 'Weather for a city', inputSchema: WEATHER }) },
      });
      assert.equal(r.finishReason, 'tool-calls');
      assert.equal(r.toolCalls.length, 1);
      const [call] = r.toolCalls;
      assert.equal(call.toolName, 'weather');
      assert.ok(call.toolCallId);
      assert.deepEqual(WEATHER.parse(call.input), call.input);
      assert.ok(call.input.days >= 2);
    });

    test('a tool result goes back and the model answers with it', async () => {
      const r = await generateText({
        model: model('mock-chat'),
        prompt: 'weather in Oslo?',
        tools: {
          weather: tool({ inputSchema: WEATHER, execute: async ({ city }) => `${city}: 12C and rain` }),
        },
        stopWhen: stepCountIs(3),
      });
      assert.equal(r.steps.length, 2);
      assert.match(r.text, /12C and rain/);
    });

    test('streamText with tools streams the tool call', async () => {
      const r = streamText({
        model: model('fake-chat'),
        prompt: 'weather?',
        tools: { weather: tool({ inputSchema: WEATHER }) },
      });
      const calls = await r.toolCalls;
      assert.equal(calls.length, 1);
      assert.equal(calls[0].toolName, 'weather');
      assert.deepEqual(WEATHER.parse(calls[0].input), calls[0].input);
    });

    test('generateObject with a zod schema', async () => {
      const schema = z.object({
        title: z.string(),
        rating: z.number().min(1).max(5),
        tags: z.array(z.string()),
        published: z.boolean(),
      });
      for (const name of ['mock-chat', 'fake-chat']) {
        const r = await generateObject({ model: model(name), schema, prompt: 'review a book' });
        assert.deepEqual(schema.parse(r.object), r.object);
        assert.equal(typeof r.object.title, 'string');
        assert.ok(r.object.tags.length >= 1);
      }
      const sent = (await fake.requests('ok,id=node')).at(-1).body;
      assert.equal(sent.response_format.type, 'json_schema');
    });
  });
}

describe('responses: built-in OpenAI tools', () => {
  test('web search is refused with a clear error, not ignored', async () => {
    await assert.rejects(
      generateText({
        model: provider('fake-chat'),
        prompt: 'search the web',
        tools: { web_search: provider.tools.webSearch({}) },
      }),
      (e) => e.statusCode === 400 && /web_search/.test(e.message) && /function/.test(e.message),
    );
  });

  test('previousResponseId continues a response the sidecar stored', async () => {
    const first = await generateText({ model: provider('fake-chat'), prompt: 'my name is Ada' });
    const r = await generateText({
      model: provider('fake-chat'),
      prompt: 'what is my name?',
      providerOptions: { openai: { previousResponseId: first.response.id } },
    });
    assert.match(r.text, /what is my name/);
    const sent = (await fake.requests('ok,id=node')).at(-1).body;
    assert.deepEqual(sent.messages.map((m) => m.role), ['user', 'assistant', 'user']);
  });
});
