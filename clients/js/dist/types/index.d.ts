/**
 * Rookery's JavaScript client library (an ES module, no dependencies), for browsers and Node 20+.
 *
 * ```js
 * import { RookeryClient } from '/sdk/rookery.js';
 * const client = new RookeryClient({ token, device: 'web' });
 * client.on('message', (m) => console.log(m.conv, m.seq, m.from, m.body));
 * await client.connect();
 * await client.send('dm:alice:bob', { text: 'hi' });
 * ```
 */
export { RookeryClient, dmId, newCid, userOfToken } from './client.js';
export type { ClientOptions, WebSocketConstructor, WebSocketLike } from './client.js';
export { SyncEngine, MAX_HELD, NEW_CONV_BACKLOG } from './sync.js';
export type { SyncEffect } from './sync.js';
export { Outbox, MemoryOutboxStore, IndexedDbOutboxStore, RETRYABLE } from './outbox.js';
export type { OutboxStore } from './outbox.js';
export { backoffDelay, DEFAULT_BACKOFF } from './backoff.js';
export type { BackoffOptions } from './backoff.js';
export { uploadMedia, sha256Hex } from './upload.js';
export type { UploadOptions, HttpContext } from './upload.js';
export { RookeryError } from './types.js';
export type * from './types.js';
