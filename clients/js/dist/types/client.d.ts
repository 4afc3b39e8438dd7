/**
 * The Rookery client: one WebSocket to the least loaded node, reconnecting with jittered backoff through the
 * node list; requests as promises; typed events; exactly-once, in-order delivery per conversation (see
 * [`SyncEngine`]); an outbox that sends every message once, across reconnects and page reloads (see
 * [`Outbox`]); heartbeats; media upload. Works in browsers and in Node (pass `WebSocket` from the `ws` package).
 */
import { type BackoffOptions } from './backoff.js';
import { type OutboxStore } from './outbox.js';
import { SyncEngine } from './sync.js';
import { type ConnectionState, type ConvSummary, type Friends, type Group, type Message, type OutboxEntry, type Receipts, type RookeryEvents, type Sent, type Welcome } from './types.js';
import { type UploadOptions } from './upload.js';
/** The part of the WebSocket API the client uses (the browser's, or the `ws` package's). */
export interface WebSocketLike {
    readyState: number;
    send(data: string): void;
    close(code?: number, reason?: string): void;
    onopen: ((ev: unknown) => void) | null;
    onclose: ((ev: unknown) => void) | null;
    onerror: ((ev: unknown) => void) | null;
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;
export interface ClientOptions {
    /** A user token (`rookery token USER`, or `POST /v1/token` from your backend). */
    token: string;
    /** This device's name (1 to 64 of `A-Z a-z 0-9 _ . -`); the same user and device replace each other. */
    device: string;
    /** HTTP address of any node, e.g. `http://127.0.0.1:7001`. Default in a browser: the page's origin. */
    url?: string;
    /** Connect to this node id first when it is listed (default: the least loaded node). */
    preferNode?: string;
    /** The WebSocket constructor (default: the global one; in Node 20 pass `WebSocket` from `ws`). */
    WebSocket?: WebSocketConstructor;
    fetch?: typeof fetch;
    /** Where unsent messages are kept (default: IndexedDB in a browser, memory elsewhere). */
    outboxStore?: OutboxStore;
    backoff?: BackoffOptions;
    /** How long a request waits for its reply (default 10 s). */
    requestTimeoutMs?: number;
    /** How long connecting and `auth` may take per node (default 5 s). */
    connectTimeoutMs?: number;
    /** Messages pulled per `sync` request when catching up (default 200). */
    pullLimit?: number;
}
type Listener<T> = (payload: T) => void;
type Frame = Record<string, unknown>;
/** A new `cid`: unique per sender and conversation, at most 64 characters. */
export declare function newCid(): string;
export declare class RookeryClient {
    readonly opts: Required<Pick<ClientOptions, 'requestTimeoutMs' | 'connectTimeoutMs' | 'pullLimit'>> & ClientOptions;
    /** The receive state per conversation (what has been delivered, gaps, pulls). */
    readonly sync: SyncEngine;
    private readonly outbox;
    private readonly store;
    private readonly listeners;
    private readonly pending;
    private readonly waiters;
    private ws;
    private rid;
    private closed;
    private kicked;
    private running;
    private wake;
    private knownNodes;
    private heartbeat;
    private retryTimer;
    private lastHeard;
    private lastSent;
    private firstWelcome;
    private resolveFirst;
    private rejectFirst;
    /** The outbox as loaded from its store (sends wait for it). */
    readonly ready: Promise<void>;
    state: ConnectionState;
    welcome: Welcome | null;
    /** Which node this client is connected to (or last was). */
    node: string | null;
    constructor(options: ClientOptions);
    on<K extends keyof RookeryEvents>(event: K, fn: Listener<RookeryEvents[K]>): () => void;
    private emit;
    private setState;
    /** The HTTP address requests go to. */
    get baseUrl(): string;
    get user(): string | null;
    /** Starts connecting (and reconnecting until `close`); resolves with the first `welcome`. */
    connect(): Promise<Welcome>;
    /** Closes the connection for good. */
    close(): void;
    /** Drops the connection now and reconnects (the outbox and pulls carry on). For tests and "retry now". */
    reconnect(): void;
    private browserHooked;
    private listenToBrowser;
    private isOffline;
    private waitForWake;
    private loop;
    /** WebSocket URLs to try, best first: the preferred node, then the up nodes by fewest connections. */
    private candidates;
    private fetchWithTimeout;
    /** Opens one socket and authenticates; resolves once `welcome` arrived. */
    private open;
    /** Runs an authenticated socket until it closes. */
    private serve;
    /** After each (re)connect: the conversation list, pulls of whatever moved, then the outbox. */
    private afterConnect;
    private startHeartbeat;
    private stopHeartbeat;
    private raw;
    private dispatch;
    /** Carries out the sync engine's effects. */
    private run;
    private pull;
    /** Sends a frame with a fresh `rid` and resolves with its reply (rejects with the `error`, or `timeout`). */
    request<T = Frame>(frame: Frame, timeoutMs?: number): Promise<T>;
    /** Resolves once connected (at once when already online). */
    online(): Promise<void>;
    /**
     * Queues a message and resolves with its `sent` once stored. The message keeps its `cid` until then, across
     * reconnects and (with a persistent store) reloads, so it is stored exactly once.
     */
    send(conv: string, body: Record<string, unknown>, extra?: {
        reply_to?: number;
        mentions?: string[];
    }): Promise<Sent>;
    /** Queues a message and returns its outbox entry at once (its `sent` comes as an event). */
    queue(conv: string, body: Record<string, unknown>, extra?: {
        reply_to?: number;
        mentions?: string[];
    }): OutboxEntry;
    /** Resolves when the outbox entry `cid` is acknowledged; rejects if the server refuses it for good. */
    whenSent(cid: string): Promise<Sent>;
    /** Unsent messages, oldest first (failed ones carry `failed`). */
    pendingMessages(): OutboxEntry[];
    /** Tries a failed message again. */
    retry(cid: string): void;
    /** Gives up on an unsent message. */
    discard(cid: string): void;
    private pumpRetry;
    private pump;
    convs(): Promise<ConvSummary[]>;
    /** Messages of `conv`: `{after}` (newer than) or `{before}` (history just below), at most `limit`. */
    history(conv: string, q?: {
        after?: number;
        before?: number;
        limit?: number;
    }): Promise<{
        msgs: Message[];
        last_seq: number;
    }>;
    read(conv: string, seq: number): void;
    typing(conv: string): void;
    receipts(conv: string, seq: number, counts?: boolean): Promise<Receipts>;
    friends(): Promise<Friends>;
    friendRequest(user: string, note?: string): Promise<Frame>;
    friendAccept(user: string): Promise<Frame>;
    friendDecline(user: string): Promise<Frame>;
    friendRemove(user: string): Promise<Frame>;
    groupCreate(conv: string, name: string, members: string[]): Promise<Group>;
    groupAdd(conv: string, members: string[]): Promise<Group>;
    groupRemove(conv: string, members: string[]): Promise<Group>;
    /**
     * A change this device made stored a system message that is not pushed to this device: pull it, so it comes
     * as a `message` event like everyone else's copy.
     */
    private pulled;
    groupLeave(conv: string): Promise<Frame>;
    groupInfo(conv: string, members?: boolean): Promise<Group>;
    recall(conv: string, seq: number): Promise<Frame>;
    /** Edits a message (servers without `edit` answer `bad_request`). */
    edit(conv: string, seq: number, body: Record<string, unknown>): Promise<Frame>;
    /** Adds or takes back a reaction (servers without `react` answer `bad_request`). */
    react(conv: string, seq: number, emoji: string, on?: boolean): Promise<Frame>;
    /**
     * Whether the server knows a frame type: it answers an unknown type with `bad_request` "unknown ..." and a
     * known one with a different error for a frame aimed at nothing (a message that does not exist).
     */
    supports(type: 'edit' | 'react'): Promise<boolean>;
    /** The direct conversation of this user and `other`. */
    dmWith(other: string): string;
    /** Uploads media (chunked, resumable, deduplicated) and returns its id. */
    upload(data: Blob | ArrayBuffer | Uint8Array, opts: UploadOptions): Promise<string>;
    /** A URL of a media item (or its thumbnail) usable in `<img src>` (the token rides in the query). */
    mediaUrl(id: string, thumb?: boolean): string;
}
/** `dm:A:B` with A < B in byte order. */
export declare function dmId(a: string, b: string): string;
/** The user id (`sub`) of a token, read without checking it (the server checks). */
export declare function userOfToken(token: string): string | null;
export {};
