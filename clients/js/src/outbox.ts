/**
 * The outbox: messages the server has not acknowledged with `sent`, each with the `cid` it keeps for life, so
 * that sending it again (after a reconnect or a page reload) stores it at most once. [`Outbox`] is the pure
 * part (which entry goes next, what an answer means); an [`OutboxStore`] keeps the entries across reloads.
 */
import type { OutboxEntry } from './types.js';

/** Answers after which the same `cid` is sent again later; any other error fails the entry for good. */
export const RETRYABLE = new Set(['unavailable', 'rate_limited', 'timeout', 'disconnected', 'internal']);

export class Outbox {
  private list: OutboxEntry[] = [];
  private inflight = new Set<string>();

  /** Entries loaded from a store, in creation order (repeats of a cid are ignored). */
  restore(entries: OutboxEntry[]): void {
    for (const e of [...entries].sort((a, b) => a.created - b.created)) {
      if (!this.list.some((x) => x.cid === e.cid)) this.list.push(e);
    }
  }

  add(entry: OutboxEntry): void {
    this.list.push(entry);
  }

  entries(): OutboxEntry[] {
    return [...this.list];
  }

  get(cid: string): OutboxEntry | undefined {
    return this.list.find((e) => e.cid === cid);
  }

  /**
   * The entries to send now, marked in flight: per conversation the oldest unfailed entry, unless it is already
   * in flight (one at a time per conversation keeps their order; conversations go in parallel).
   */
  due(): OutboxEntry[] {
    const out: OutboxEntry[] = [];
    const seen = new Set<string>();
    for (const e of this.list) {
      if (e.failed || seen.has(e.conv)) continue;
      seen.add(e.conv);
      if (this.inflight.has(e.cid)) continue;
      this.inflight.add(e.cid);
      out.push(e);
    }
    return out;
  }

  /** `sent` for `cid`: the entry leaves the outbox. */
  onSent(cid: string): OutboxEntry | undefined {
    this.inflight.delete(cid);
    const i = this.list.findIndex((e) => e.cid === cid);
    if (i < 0) return undefined;
    return this.list.splice(i, 1)[0];
  }

  /** An error answer for `cid`: `retry` (sent again by a later `due`) or `failed` (kept, marked, skipped). */
  onError(cid: string, code: string): 'retry' | 'failed' {
    this.inflight.delete(cid);
    if (RETRYABLE.has(code)) return 'retry';
    const e = this.get(cid);
    if (e) e.failed = code;
    return 'failed';
  }

  /** The connection dropped: nothing is in flight; every entry goes again on the next connection. */
  onDisconnect(): void {
    this.inflight.clear();
  }

  /** A failed entry is tried again. */
  retry(cid: string): OutboxEntry | undefined {
    const e = this.get(cid);
    if (e) delete e.failed;
    return e;
  }

  /** Removes an entry (e.g. a failed one the user gave up on). */
  drop(cid: string): OutboxEntry | undefined {
    this.inflight.delete(cid);
    const i = this.list.findIndex((e) => e.cid === cid);
    return i < 0 ? undefined : this.list.splice(i, 1)[0];
  }
}

/** Keeps outbox entries across restarts. Every method may be called concurrently. */
export interface OutboxStore {
  load(): Promise<OutboxEntry[]>;
  put(entry: OutboxEntry): Promise<void>;
  remove(cid: string): Promise<void>;
}

/** An outbox store in memory (Node, tests): it lasts as long as the object. */
export class MemoryOutboxStore implements OutboxStore {
  private map = new Map<string, OutboxEntry>();
  async load(): Promise<OutboxEntry[]> {
    return [...this.map.values()].map((e) => ({ ...e }));
  }
  async put(entry: OutboxEntry): Promise<void> {
    this.map.set(entry.cid, { ...entry });
  }
  async remove(cid: string): Promise<void> {
    this.map.delete(cid);
  }
}

/** An outbox store in the browser's IndexedDB, one object store per user, so it survives page reloads. */
export class IndexedDbOutboxStore implements OutboxStore {
  private db: Promise<IDBDatabase>;
  private readonly name: string;

  constructor(user: string, dbName = 'rookery-outbox') {
    this.name = user;
    this.db = new Promise((resolve, reject) => {
      const req = indexedDB.open(`${dbName}:${user}`, 1);
      req.onupgradeneeded = () => req.result.createObjectStore('outbox', { keyPath: 'cid' });
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  private async run<T>(mode: IDBTransactionMode, f: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const tx = db.transaction('outbox', mode);
      const req = f(tx.objectStore('outbox'));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async load(): Promise<OutboxEntry[]> {
    return this.run('readonly', (s) => s.getAll() as IDBRequest<OutboxEntry[]>);
  }
  async put(entry: OutboxEntry): Promise<void> {
    await this.run('readwrite', (s) => s.put(entry));
  }
  async remove(cid: string): Promise<void> {
    await this.run('readwrite', (s) => s.delete(cid));
  }
  toString(): string {
    return `IndexedDbOutboxStore(${this.name})`;
  }
}
