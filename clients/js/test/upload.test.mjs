// The upload client against a scripted server (a fake fetch): instant, proof of possession, chunks with a
// resend of what the server reports missing. WebCrypto's sha256 is Node's own.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { uploadMedia, sha256Hex } from '../dist/rookery.js';

const sha = (b) => createHash('sha256').update(b).digest('hex');
const bytes = new Uint8Array(2500).map((_, i) => (i * 7) % 251);

/** A fetch that answers with `script(method, path, body)` and records every call. */
function fakeFetch(script) {
  const calls = [];
  const f = async (url, init) => {
    const path = new URL(url).pathname;
    const body = init.body instanceof Uint8Array ? init.body : init.body ? JSON.parse(init.body) : undefined;
    calls.push({ method: init.method, path, body, auth: init.headers.Authorization });
    const [status, json] = script(init.method, path, body, calls);
    return new Response(json === undefined ? null : JSON.stringify(json), { status });
  };
  return { f, calls };
}
const http = (f) => ({ base: 'http://127.0.0.1:1', token: 'T', fetch: f });

test('sha256Hex is WebCrypto sha256', async () => {
  assert.equal(await sha256Hex(bytes), sha(bytes));
});

test('content this user stored before: 200 with the media id at once', async () => {
  const { f, calls } = fakeFetch(() => [200, { media: 'm1' }]);
  assert.equal(await uploadMedia(http(f), bytes, { mime: 'image/png', name: 'a.png' }), 'm1');
  assert.equal(calls.length, 1);
  assert.deepEqual(calls[0].body, { size: 2500, sha256: sha(bytes), mime: 'image/png', name: 'a.png' });
  assert.equal(calls[0].auth, 'Bearer T');
});

test('content only others stored: the proof of the asked range is sent with the same request', async () => {
  const { f, calls } = fakeFetch((method, path, body) =>
    body.proof === undefined ? [200, { proof: { offset: 100, length: 700 } }] : [200, { media: 'm2' }],
  );
  assert.equal(await uploadMedia(http(f), bytes, { mime: 'image/png' }), 'm2');
  assert.equal(calls.length, 2);
  assert.equal(calls[1].body.proof, sha(bytes.subarray(100, 800)));
  assert.equal(calls[1].body.sha256, sha(bytes));
});

test('chunked: skips received chunks, resends what complete reports missing, retries a 5xx', async () => {
  let failedOnce = false;
  let completes = 0;
  const { f, calls } = fakeFetch((method, path) => {
    if (method === 'POST' && path === '/v1/uploads') return [201, { upload: 'u1', chunk_size: 1000, received: [0] }];
    if (method === 'PUT' && path === '/v1/uploads/u1/1' && !failedOnce) {
      failedOnce = true;
      return [503, { error: 'unavailable' }];
    }
    if (method === 'PUT') return [204, undefined];
    if (path === '/v1/uploads/u1/complete') {
      completes++;
      return completes === 1 ? [409, { missing: [2] }] : [200, { media: 'm3' }];
    }
    return [404, {}];
  });
  const progress = [];
  const id = await uploadMedia(http(f), bytes, { mime: 'image/png', onProgress: (s, t) => progress.push([s, t]) });
  assert.equal(id, 'm3');
  const puts = calls.filter((c) => c.method === 'PUT').map((c) => c.path);
  assert.deepEqual(puts, ['/v1/uploads/u1/1', '/v1/uploads/u1/1', '/v1/uploads/u1/2', '/v1/uploads/u1/2']);
  const last = calls.filter((c) => c.path === '/v1/uploads/u1/2').at(-1).body;
  assert.deepEqual([...last], [...bytes.subarray(2000)]);
  assert.equal(completes, 2);
  assert.ok(progress.length >= 2);
});

test('a refused upload is an error with the server code', async () => {
  const { f } = fakeFetch(() => [413, { error: 'too_large', message: 'size is over media.max_bytes' }]);
  await assert.rejects(uploadMedia(http(f), bytes, { mime: 'image/png' }), (e) => e.code === 'too_large');
});
