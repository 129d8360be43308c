// Starts the real binaries for the client tests: the fake provider and llmesh-sidecar on free
// loopback ports, the sidecar with a generated LLMRoute config. Binaries come from
// $LLMESH_BIN_DIR (default: the workspace's target/debug); run `cargo build --bins` first.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN = process.env.LLMESH_BIN_DIR ?? join(REPO, 'target', 'debug');

function binary(name) {
  const path = join(BIN, name);
  if (!existsSync(path)) throw new Error(`${path} is missing: run \`cargo build --bins\` (or tests/e2e/run.sh)`);
  return path;
}

async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** The fake provider; `url(scenario)` is a backend baseUrl that picks its behaviour. */
export async function startFake() {
  const proc = spawn(binary('llmesh-fake-provider'), ['--listen', '127.0.0.1:0', '--hang-limit', '60s'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const first = await new Promise((ok, fail) => {
    const rl = createInterface({ input: proc.stdout });
    rl.once('line', (line) => ok(line));
    proc.once('exit', (code) => fail(new Error(`the fake exited with ${code}`)));
  });
  const m = /^listening on (127\.0\.0\.1:\d+)$/.exec(first);
  if (!m) throw new Error(`unexpected first line from the fake: ${first}`);
  const addr = m[1];
  return {
    url: (scenario) => `http://${addr}/s/${scenario}/v1`,
    async requests(scenario) {
      const q = scenario === undefined ? '' : `?scenario=${encodeURIComponent(scenario)}`;
      const r = await fetch(`http://${addr}/__requests${q}`);
      return (await r.json()).data;
    },
    stop: () => proc.kill('SIGKILL'),
  };
}

/** An LLMRoute manifest. */
export const route = (name, backends, spec = {}) => ({
  apiVersion: 'llmesh.io/v1alpha1',
  kind: 'LLMRoute',
  metadata: { name },
  spec: { backends, ...spec },
});

/** A backend on the sidecar's built-in mock provider. */
export const mock = (name, behaviour = {}) => ({
  name, provider: 'mock', model: 'gpt-4o-mini-2024-07-18', mock: behaviour,
});

/** An OpenAI-compatible backend at `baseUrl`. */
export const upstream = (name, baseUrl, model = 'gpt-4o-mini-2024-07-18') => ({
  name, provider: 'openaiCompatible', model, baseUrl,
});

/** llmesh-sidecar serving `manifests` (JSON is YAML, one document each). */
export async function startSidecar(manifests) {
  const dir = mkdtempSync(join(tmpdir(), 'llmesh-node-'));
  const config = join(dir, 'routes.yaml');
  writeFileSync(config, manifests.map((m) => JSON.stringify(m)).join('\n---\n') + '\n');
  const port = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('LLMESH_')));
  let stderr = '';
  const proc = spawn(binary('llmesh-sidecar'),
    ['--config', config, '--listen', `127.0.0.1:${port}`, '--access-log', 'off'],
    { stdio: ['ignore', 'ignore', 'pipe'], env });
  proc.stderr.on('data', (d) => { stderr += d; });
  let exited = null;
  proc.once('exit', (code) => { exited = code; });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited !== null) throw new Error(`the sidecar exited with ${exited}:\n${stderr}`);
    try {
      if ((await fetch(`${base}/readyz`)).ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`the sidecar did not become ready:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    base,
    url: `${base}/v1`,
    stop: () => new Promise((ok) => {
      if (exited !== null) return ok();
      proc.once('exit', () => ok());
      proc.kill('SIGTERM');
    }),
  };
}
