/**
 * Chunked, resumable media upload (PROTOCOL.md "Media"): the sha256 is computed with WebCrypto, chunks the
 * server already has are skipped, a lost chunk is sent again, and a proof of possession is answered when
 * the server asks for one.
 */
import { RookeryError } from './types.js';

export interface UploadOptions {
  mime: string;
  name?: string;
  /** Called after each chunk with the bytes the server has. */
  onProgress?: (sent: number, total: number) => void;
  /** Tries per request before giving up (network errors and 5xx). */
  tries?: number;
}

export interface HttpContext {
  /** e.g. `http://127.0.0.1:7001` */
  base: string;
  token: string;
  fetch: typeof fetch;
}

export async function sha256Hex(data: BufferSource): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', data);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

async function toBytes(data: Blob | ArrayBuffer | Uint8Array): Promise<Uint8Array<ArrayBuffer>> {
  if (data instanceof Uint8Array) return new Uint8Array(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(await data.arrayBuffer());
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** One request with retries on network errors and 5xx; other statuses are returned as they are. */
async function call(
  http: HttpContext,
  method: string,
  path: string,
  body: BodyInit | undefined,
  tries: number,
  contentType?: string,
): Promise<{ status: number; json: Record<string, unknown> }> {
  let last: unknown;
  for (let i = 0; i < tries; i++) {
    if (i > 0) await sleep(200 * 2 ** i);
    try {
      const headers: Record<string, string> = { Authorization: `Bearer ${http.token}` };
      if (contentType) headers['Content-Type'] = contentType;
      const res = await http.fetch(`${http.base}${path}`, { method, headers, body });
      const text = await res.text();
      if (res.status >= 500) {
        last = new RookeryError('unavailable', `${method} ${path}: HTTP ${res.status}`);
        continue;
      }
      let json: Record<string, unknown> = {};
      try {
        json = text ? JSON.parse(text) : {};
      } catch {
        json = {};
      }
      return { status: res.status, json };
    } catch (e) {
      last = e;
    }
  }
  throw last instanceof RookeryError ? last : new RookeryError('unavailable', String(last));
}

function fail(status: number, json: Record<string, unknown>, what: string): never {
  const code = typeof json.error === 'string' ? json.error : `http_${status}`;
  const message = typeof json.message === 'string' ? json.message : `${what}: HTTP ${status}`;
  throw new RookeryError(code, message);
}

/** Uploads `data` and returns its media id. Calling it again after a failure resumes where it stopped. */
export async function uploadMedia(
  http: HttpContext,
  data: Blob | ArrayBuffer | Uint8Array,
  opts: UploadOptions,
): Promise<string> {
  const bytes = await toBytes(data);
  const tries = opts.tries ?? 4;
  const sha256 = await sha256Hex(bytes);
  const request: Record<string, unknown> = {
    size: bytes.length,
    sha256,
    mime: opts.mime,
    name: opts.name ?? 'file',
  };
  let start = await call(http, 'POST', '/v1/uploads', JSON.stringify(request), tries, 'application/json');
  if (start.status === 200 && start.json.proof && typeof start.json.proof === 'object') {
    // content only others have stored: prove we have the bytes
    const { offset, length } = start.json.proof as { offset: number; length: number };
    request.proof = await sha256Hex(bytes.subarray(offset, offset + length));
    start = await call(http, 'POST', '/v1/uploads', JSON.stringify(request), tries, 'application/json');
  }
  if (start.status === 200 && typeof start.json.media === 'string') {
    opts.onProgress?.(bytes.length, bytes.length);
    return start.json.media;
  }
  if (start.status !== 201 || typeof start.json.upload !== 'string') fail(start.status, start.json, 'upload');
  const upload = start.json.upload;
  const chunk = Number(start.json.chunk_size);
  const count = Math.max(1, Math.ceil(bytes.length / chunk));
  let received = new Set<number>((start.json.received as number[]) ?? []);
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < count; i++) {
      if (received.has(i)) continue;
      const part = bytes.subarray(i * chunk, Math.min(bytes.length, (i + 1) * chunk));
      const put = await call(http, 'PUT', `/v1/uploads/${upload}/${i}`, part, tries, 'application/octet-stream');
      if (put.status !== 204 && put.status !== 200) fail(put.status, put.json, 'chunk');
      received.add(i);
      opts.onProgress?.(Math.min(bytes.length, received.size * chunk), bytes.length);
    }
    const done = await call(http, 'POST', `/v1/uploads/${upload}/complete`, undefined, tries);
    if (done.status === 200 && typeof done.json.media === 'string') return done.json.media;
    if (done.status !== 409) fail(done.status, done.json, 'complete');
    const missing = new Set<number>((done.json.missing as number[]) ?? []);
    received = new Set([...Array(count).keys()].filter((i) => !missing.has(i)));
  }
  throw new RookeryError('internal', 'upload: chunks still missing after three rounds');
}
