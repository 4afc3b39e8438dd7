// Test harness for the browser tests: real `rookery` processes on loopback (free ports, temp data dirs),
// a headless Debian Chromium through playwright-core, and SDK clients in Node (WebSocket from `ws`).
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateSync } from 'node:zlib';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { RookeryClient, MemoryOutboxStore } from '../../clients/js/dist/rookery.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const SHOTS = join(ROOT, 'web', 'screenshots');
const SECRET = 'browser-test-secret';
const ADMIN = 'browser-test-admin';

export function binary() {
  const candidates = [process.env.ROOKERY_BIN, join(ROOT, 'target/release/rookery'), join(ROOT, 'target/debug/rookery')];
  const found = candidates.find((p) => p && existsSync(p));
  if (!found) throw new Error('no rookery binary: run `cargo build --release` (or set ROOKERY_BIN)');
  return found;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` until it returns a truthy value (returned) or `ms` pass (throws with `what`). */
export async function until(f, what, ms = 10_000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await f();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what} (last: ${last})`);
}

/** A cluster of `n` real rookery processes sharing one config, each on free loopback ports. */
export async function startCluster(n = 1, extra = '') {
  const dir = mkdtempSync(join(tmpdir(), 'rookery-web-'));
  const nodes = [];
  for (let i = 1; i <= n; i++) {
    nodes.push({ id: `n${i}`, listen: `127.0.0.1:${await freePort()}`, peer: `127.0.0.1:${await freePort()}` });
  }
  let config = `[auth]\ntoken_secret = "${SECRET}"\nadmin_key = "${ADMIN}"\n\n[chat]\nheartbeat_s = 2\nack_timeout_ms = 1000\n\n[cluster]\npeer_timeout_ms = 1000\n${extra}\n`;
  for (const node of nodes) {
    config += `\n[[nodes]]\nid = "${node.id}"\nlisten = "${node.listen}"\npeer = "${node.peer}"\ndata_dir = "data/${node.id}"\n`;
  }
  const file = join(dir, 'cluster.toml');
  writeFileSync(file, config);
  mkdirSync(join(dir, 'data'), { recursive: true });
  const bin = binary();
  const procs = new Map();
  const logs = new Map();

  async function start(id) {
    const node = nodes.find((x) => x.id === id);
    const proc = spawn(bin, ['--config', file, '--node', id], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } });
    let log = logs.get(id) ?? '';
    proc.stdout.on('data', (d) => (log += d));
    proc.stderr.on('data', (d) => {
      log += d;
      logs.set(id, log.slice(-20_000));
    });
    procs.set(id, proc);
    await until(async () => (await fetch(`http://${node.listen}/healthz`)).ok, `node ${id} to answer /healthz`, 20_000);
  }

  for (const node of nodes) await start(node.id);
  if (n > 1) {
    // peer links up everywhere before the tests start
    await until(async () => {
      for (const node of nodes) {
        const list = await (await fetch(`http://${node.listen}/v1/nodes`)).json();
        if (!list.every((x) => x.up)) return false;
      }
      return true;
    }, 'every peer link to be up', 20_000);
  }

  return {
    dir,
    nodes,
    url: (id = 'n1') => `http://${nodes.find((x) => x.id === id).listen}`,
    log: (id) => logs.get(id) ?? '',
    start,
    /** SIGKILL, no goodbye. */
    kill(id) {
      const p = procs.get(id);
      procs.delete(id);
      p?.kill('SIGKILL');
      return new Promise((r) => (p && p.exitCode === null ? p.once('exit', r) : r()));
    },
    async token(user) {
      const res = await fetch(`${this.url(nodes[0].id)}/v1/token`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${ADMIN}` },
        body: JSON.stringify({ user, ttl_s: 3600 }),
      });
      return (await res.json()).token;
    },
    async stop() {
      await Promise.all(
        [...procs.values()].map(
          (p) =>
            new Promise((r) => {
              if (p.exitCode !== null) return r();
              p.once('exit', r);
              p.kill('SIGTERM');
              setTimeout(() => p.kill('SIGKILL'), 5000).unref();
            }),
        ),
      );
      procs.clear();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An SDK client in Node, connected. */
export async function sdkClient(cluster, user, device = 'node', url = cluster.url()) {
  const client = new RookeryClient({
    token: await cluster.token(user),
    device,
    url,
    WebSocket,
    outboxStore: new MemoryOutboxStore(),
    backoff: { baseMs: 200, maxMs: 2000 },
  });
  await client.connect();
  return client;
}

/** Every message of `conv` from the server (pulled with `sync` by an SDK client). */
export async function allMessages(client, conv) {
  const out = [];
  let after = 0;
  for (;;) {
    const r = await client.history(conv, { after, limit: 1000 });
    out.push(...r.msgs);
    if (r.msgs.length === 0 || r.msgs.at(-1).seq >= r.last_seq) return out;
    after = r.msgs.at(-1).seq;
  }
}

export async function launchBrowser() {
  const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
  return chromium.launch({
    executablePath,
    // playwright-core gives each launch a fresh temporary user-data-dir
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A browser context (its own storage) with a page signed in as `user` at `url`. */
export async function openApp(browser, cluster, user, { url = cluster.url(), query = '', viewport, mobile = false } = {}) {
  const context = await browser.newContext({
    viewport: viewport ?? { width: 1280, height: 800 },
    deviceScaleFactor: mobile ? 2 : 1,
    isMobile: mobile,
    hasTouch: mobile,
  });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error(`[${user}] page error:`, e.message));
  const token = await cluster.token(user);
  await page.goto(`${url}/${query}#token=${token}`);
  await page.waitForSelector('#status[data-state="online"]', { timeout: 15_000 });
  return { context, page };
}

/** A PNG of w x h pixels, colored by `paint(x, y) -> [r, g, b]` (a gradient by default), made without any image library. */
export function makePng(w, h, paint = (x, y) => [(255 * x) / w, (180 * y) / h + 40, 200 - (120 * (x + y)) / (w + h)]) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(crc(td));
    return Buffer.concat([len, td, c]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    const row = y * (w * 3 + 1);
    raw[row] = 0;
    for (let x = 0; x < w; x++) {
      const [r, g, b] = paint(x, y);
      const i = row + 1 + x * 3;
      raw[i] = Math.max(0, Math.min(255, Math.round(r)));
      raw[i + 1] = Math.max(0, Math.min(255, Math.round(g)));
      raw[i + 2] = Math.max(0, Math.min(255, Math.round(b)));
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Texts of the messages shown in the open chat (sent ones, with a seq). */
export async function shownTexts(page) {
  return page.$$eval('.messages .msg[data-seq] .bubble', (els) => els.map((e) => e.firstChild?.textContent ?? ''));
}
