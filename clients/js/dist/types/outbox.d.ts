/**
 * The outbox: messages the server has not acknowledged with `sent`, each with the `cid` it keeps for life, so
 * that sending it again (after a reconnect or a page reload) stores it at most once. [`Outbox`] is the pure
 * part (which entry goes next, what an answer means); an [`OutboxStore`] keeps the entries across reloads.
 */
import type { OutboxEntry } from './types.js';
/** Answers after which the same `cid` is sent again later; any other error fails the entry for good. */
export declare const RETRYABLE: Set<string>;
export declare class Outbox {
    private list;
    private inflight;
    /** Entries loaded from a store, in creation order (repeats of a cid are ignored). */
    restore(entries: OutboxEntry[]): void;
    add(entry: OutboxEntry): void;
    entries(): OutboxEntry[];
    get(cid: string): OutboxEntry | undefined;
    /**
     * The entries to send now, marked in flight: per conversation the oldest unfailed entry, unless it is already
     * in flight (one at a time per conversation keeps their order; conversations go in parallel).
     */
    due(): OutboxEntry[];
    /** `sent` for `cid`: the entry leaves the outbox. */
    onSent(cid: string): OutboxEntry | undefined;
    /** An error answer for `cid`: `retry` (sent again by a later `due`) or `failed` (kept, marked, skipped). */
    onError(cid: string, code: string): 'retry' | 'failed';
    /** The connection dropped: nothing is in flight; every entry goes again on the next connection. */
    onDisconnect(): void;
    /** A failed entry is tried again. */
    retry(cid: string): OutboxEntry | undefined;
    /** Removes an entry (e.g. a failed one the user gave up on). */
    drop(cid: string): OutboxEntry | undefined;
}
/** Keeps outbox entries across restarts. Every method may be called concurrently. */
export interface OutboxStore {
    load(): Promise<OutboxEntry[]>;
    put(entry: OutboxEntry): Promise<void>;
    remove(cid: string): Promise<void>;
}
/** An outbox store in memory (Node, tests): it lasts as long as the object. */
export declare class MemoryOutboxStore implements OutboxStore {
    private map;
    load(): Promise<OutboxEntry[]>;
    put(entry: OutboxEntry): Promise<void>;
    remove(cid: string): Promise<void>;
}
/** An outbox store in the browser's IndexedDB, one object store per user, so it survives page reloads. */
export declare class IndexedDbOutboxStore implements OutboxStore {
    private db;
    private readonly name;
    constructor(user: string, dbName?: string);
    private run;
    load(): Promise<OutboxEntry[]>;
    put(entry: OutboxEntry): Promise<void>;
    remove(cid: string): Promise<void>;
    toString(): string;
}
