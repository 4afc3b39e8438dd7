/**
 * The Rookery client: one WebSocket to the least loaded node, reconnecting with jittered backoff through the
 * node list; requests as promises; typed events; exactly-once, in-order delivery per conversation (see
 * [`SyncEngine`]); an outbox that sends every message once, across reconnects and page reloads (see
 * [`Outbox`]); heartbeats; media upload. Works in browsers and in Node (pass `WebSocket` from the `ws` package).
 */
import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js';
import { IndexedDbOutboxStore, MemoryOutboxStore, Outbox, type OutboxStore } from './outbox.js';
import { SyncEngine, type SyncEffect } from './sync.js';
import {
  RookeryError,
  type ConnectionState,
  type ConvSummary,
  type Friends,
  type Group,
  type Message,
  type NodeInfo,
  type OutboxEntry,
  type Receipts,
  type RookeryEvents,
  type Sent,
  type Welcome,
} from './types.js';
import { uploadMedia, type UploadOptions } from './upload.js';

/** The part of the WebSocket API the client uses (the browser's, or the `ws` package's). */
export interface WebSocketLike {
  readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
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

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: RookeryError) => void;
  timer: ReturnType<typeof setTimeout>;
}

const OPEN = 1;
/** A session that lasted this long resets the backoff; a shorter one counts as a failed attempt. */
const STABLE_SESSION_MS = 5_000;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A new `cid`: unique per sender and conversation, at most 64 characters. */
export function newCid(): string {
  const rand = Math.floor(Math.random() * 2 ** 48).toString(36);
  return `c-${Date.now().toString(36)}-${rand}`;
}

export class RookeryClient {
  readonly opts: Required<Pick<ClientOptions, 'requestTimeoutMs' | 'connectTimeoutMs' | 'pullLimit'>> &
    ClientOptions;
  /** The receive state per conversation (what has been delivered, gaps, pulls). */
  readonly sync = new SyncEngine();
  private readonly outbox = new Outbox();
  private readonly store: OutboxStore;
  private readonly listeners = new Map<string, Set<Listener<never>>>();
  private readonly pending = new Map<string, Pending>();
  private readonly waiters = new Map<string, { resolve: (s: Sent) => void; reject: (e: RookeryError) => void }>();
  private ws: WebSocketLike | null = null;
  private rid = 0;
  private closed = false;
  private kicked = false;
  private running = false;
  private wake: (() => void) | null = null;
  private knownNodes: NodeInfo[] = [];
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private lastHeard = 0;
  private lastSent = 0;
  private firstWelcome: Promise<Welcome>;
  private resolveFirst!: (w: Welcome) => void;
  private rejectFirst!: (e: RookeryError) => void;
  /** The outbox as loaded from its store (sends wait for it). */
  readonly ready: Promise<void>;
  state: ConnectionState = 'idle';
  welcome: Welcome | null = null;
  /** Which node this client is connected to (or last was). */
  node: string | null = null;

  constructor(options: ClientOptions) {
    this.opts = { requestTimeoutMs: 10_000, connectTimeoutMs: 5_000, pullLimit: 200, ...options };
    this.store =
      options.outboxStore ??
      (typeof indexedDB !== 'undefined'
        ? new IndexedDbOutboxStore(userOfToken(options.token) ?? 'anonymous')
        : new MemoryOutboxStore());
    this.ready = this.store
      .load()
      .then((entries) => {
        this.outbox.restore(entries);
        this.emit('outbox', this.outbox.entries());
      })
      .catch(() => undefined);
    this.firstWelcome = new Promise((resolve, reject) => {
      this.resolveFirst = resolve;
      this.rejectFirst = reject;
    });
    this.firstWelcome.catch(() => undefined);
  }

  // ---- events ----

  on<K extends keyof RookeryEvents>(event: K, fn: Listener<RookeryEvents[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(fn as Listener<never>);
    return () => set?.delete(fn as Listener<never>);
  }

  private emit<K extends keyof RookeryEvents>(event: K, payload: RookeryEvents[K]): void {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        (fn as Listener<RookeryEvents[K]>)(payload);
      } catch (e) {
        console.error(`rookery: ${event} listener failed`, e);
      }
    }
  }

  private setState(state: ConnectionState, extra: { retryInMs?: number } = {}): void {
    this.state = state;
    this.emit('state', { state, node: this.node ?? undefined, ...extra });
  }

  // ---- connection ----

  /** The HTTP address requests go to. */
  get baseUrl(): string {
    if (this.opts.url) return this.opts.url.replace(/\/$/, '');
    if (typeof location !== 'undefined') return location.origin;
    throw new RookeryError('bad_request', 'no url given (required outside a browser)');
  }

  get user(): string | null {
    return this.welcome?.user ?? userOfToken(this.opts.token);
  }

  /** Starts connecting (and reconnecting until `close`); resolves with the first `welcome`. */
  connect(): Promise<Welcome> {
    if (!this.running) {
      this.running = true;
      this.listenToBrowser();
      void this.loop();
    }
    return this.firstWelcome;
  }

  /** Closes the connection for good. */
  close(): void {
    this.closed = true;
    this.wake?.();
    this.ws?.close(1000, 'closed');
    this.stopHeartbeat();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.setState('closed');
  }

  /** Drops the connection now and reconnects (the outbox and pulls carry on). For tests and "retry now". */
  reconnect(): void {
    this.ws?.close(4000, 'reconnect');
    this.wake?.();
  }

  private browserHooked = false;
  private listenToBrowser(): void {
    const g = globalThis as unknown as {
      addEventListener?: (t: string, f: () => void) => void;
    };
    if (this.browserHooked || typeof g.addEventListener !== 'function' || typeof navigator === 'undefined') return;
    this.browserHooked = true;
    g.addEventListener('offline', () => {
      this.ws?.close(4001, 'offline');
    });
    g.addEventListener('online', () => this.wake?.());
  }

  private isOffline(): boolean {
    return typeof navigator !== 'undefined' && (navigator as { onLine?: boolean }).onLine === false;
  }

  private waitForWake(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms >= 0 ? setTimeout(done, ms) : null;
      function done() {
        if (timer) clearTimeout(timer);
        resolve();
      }
      this.wake = () => {
        this.wake = null;
        done();
      };
    });
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.closed && !this.kicked) {
      if (this.isOffline()) {
        this.setState('offline');
        await this.waitForWake(5_000);
        continue;
      }
      this.setState('connecting');
      let lasted = 0;
      for (const url of await this.candidates()) {
        if (this.closed) return;
        try {
          const ws = await this.open(url);
          const since = Date.now();
          await this.serve(ws);
          lasted = Date.now() - since;
          break;
        } catch (e) {
          if (e instanceof RookeryError && e.code === 'unauthorized') {
            this.rejectFirst(e);
            this.closed = true;
            this.setState('closed');
            return;
          }
        }
      }
      if (this.closed || this.kicked) break;
      // a session that lasted: reconnect at once; none, or one dropped at once: back off
      if (lasted >= STABLE_SESSION_MS) {
        attempt = 0;
        continue;
      }
      const delay = backoffDelay(attempt++, this.opts.backoff ?? DEFAULT_BACKOFF);
      this.setState('waiting', { retryInMs: delay });
      await this.waitForWake(delay);
    }
  }

  /** WebSocket URLs to try, best first: the preferred node, then the up nodes by fewest connections. */
  private async candidates(): Promise<string[]> {
    const base = this.baseUrl;
    let nodes: NodeInfo[] | null = null;
    const bases = [base, ...this.knownNodes.map((n) => httpOf(base, n.listen))];
    for (const b of [...new Set(bases)]) {
      try {
        const res = await this.fetchWithTimeout(`${b}/v1/nodes`, 3_000);
        if (res.ok) {
          nodes = (await res.json()) as NodeInfo[];
          break;
        }
      } catch {
        // that node is unreachable: ask the next one
      }
    }
    if (nodes && nodes.length > 0) this.knownNodes = nodes;
    const list = [...this.knownNodes];
    list.sort((a, b) => Number(b.up) - Number(a.up) || a.connections - b.connections || (a.id < b.id ? -1 : 1));
    const prefer = list.findIndex((n) => n.id === this.opts.preferNode);
    if (prefer > 0 && list[prefer].up) list.unshift(...list.splice(prefer, 1));
    const urls = list.map((n) => wsOf(base, n.listen));
    if (urls.length === 0) urls.push(wsOf(base, new URL(base).host));
    return [...new Set(urls)];
  }

  private async fetchWithTimeout(url: string, ms: number): Promise<Response> {
    const f = this.opts.fetch ?? fetch;
    const ctl = typeof AbortController !== 'undefined' ? new AbortController() : null;
    const timer = setTimeout(() => ctl?.abort(), ms);
    try {
      return await f(url, { signal: ctl?.signal });
    } finally {
      clearTimeout(timer);
    }
  }

  /** Opens one socket and authenticates; resolves once `welcome` arrived. */
  private open(url: string): Promise<WebSocketLike> {
    const Ctor = this.opts.WebSocket ?? (globalThis as unknown as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Ctor) throw new RookeryError('bad_request', 'no WebSocket implementation: pass options.WebSocket');
    return new Promise((resolve, reject) => {
      let ws: WebSocketLike;
      try {
        ws = new Ctor(url);
      } catch (e) {
        reject(new RookeryError('unavailable', String(e)));
        return;
      }
      const timer = setTimeout(() => {
        ws.close();
        reject(new RookeryError('timeout', `no welcome from ${url}`));
      }, this.opts.connectTimeoutMs);
      ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: this.opts.token, device: this.opts.device }));
      ws.onerror = () => undefined;
      ws.onclose = () => {
        clearTimeout(timer);
        reject(new RookeryError('unavailable', `cannot connect to ${url}`));
      };
      ws.onmessage = (ev) => {
        const frame = parse(ev.data);
        if (!frame) return;
        if (frame.type === 'welcome') {
          clearTimeout(timer);
          this.welcome = frame as unknown as Welcome;
          resolve(ws);
        } else if (frame.type === 'error') {
          clearTimeout(timer);
          ws.close();
          reject(new RookeryError(String(frame.code), String(frame.message ?? '')));
        }
      };
    });
  }

  /** Runs an authenticated socket until it closes. */
  private serve(ws: WebSocketLike): Promise<void> {
    return new Promise((resolve) => {
      this.ws = ws;
      const welcome = this.welcome as Welcome;
      this.node = welcome.node;
      this.lastHeard = Date.now();
      ws.onmessage = (ev) => {
        const frame = parse(ev.data);
        this.lastHeard = Date.now();
        if (frame) this.dispatch(frame);
      };
      ws.onclose = () => {
        if (this.ws === ws) this.ws = null;
        this.stopHeartbeat();
        this.sync.onDisconnect();
        this.outbox.onDisconnect();
        for (const [rid, p] of this.pending) {
          clearTimeout(p.timer);
          p.reject(new RookeryError('disconnected', 'the connection closed'));
          this.pending.delete(rid);
        }
        if (!this.closed && !this.kicked) this.setState('connecting');
        resolve();
      };
      this.startHeartbeat(welcome.heartbeat_s);
      this.setState('online');
      this.emit('welcome', welcome);
      this.resolveFirst(welcome);
      void this.afterConnect();
    });
  }

  /** After each (re)connect: the conversation list, pulls of whatever moved, then the outbox. */
  private async afterConnect(): Promise<void> {
    await this.ready;
    void this.pump();
    try {
      const list = await this.convs();
      this.run(this.sync.onConvs(list));
      this.emit('convs', list);
    } catch {
      // the connection dropped again; the next one lists again
    }
  }

  private startHeartbeat(heartbeatS: number): void {
    this.stopHeartbeat();
    const every = Math.max(1, heartbeatS) * 1000;
    // silence from the server for this long means the connection is dead even if the OS has not noticed (the
    // server's own rule for clients; generous enough for a background tab whose timers run once a minute)
    const deadAfter = 3 * every;
    this.lastSent = Date.now();
    this.heartbeat = setInterval(
      () => {
        const now = Date.now();
        if (now - this.lastHeard > deadAfter) {
          this.ws?.close(4002, 'heartbeat timeout');
          return;
        }
        if (now - this.lastSent >= every - 250) this.raw({ type: 'ping' });
      },
      Math.min(every, 1000),
    );
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  private raw(frame: Frame): boolean {
    if (!this.ws || this.ws.readyState !== OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    this.lastSent = Date.now();
    return true;
  }

  // ---- incoming frames ----

  private dispatch(frame: Frame): void {
    this.emit('frame', frame);
    const rid = frame.rid;
    if (rid !== undefined && rid !== null) {
      const p = this.pending.get(String(rid));
      if (p) {
        this.pending.delete(String(rid));
        clearTimeout(p.timer);
        if (frame.type === 'error') p.reject(new RookeryError(String(frame.code), String(frame.message ?? '')));
        else p.resolve(frame);
        return;
      }
    }
    switch (frame.type) {
      case 'msg':
        this.run(this.sync.onMessage(frame as unknown as Message));
        break;
      case 'notify':
        this.run(this.sync.onNotify(String(frame.conv), Number(frame.last_seq)));
        break;
      case 'kicked':
        this.kicked = true;
        this.emit('kicked', {});
        this.setState('closed');
        break;
      case 'delivered':
      case 'read':
      case 'typing':
      case 'presence':
      case 'friend_request':
      case 'friend':
      case 'recalled':
      case 'edited':
      case 'reaction':
        this.emit(frame.type, frame as never);
        break;
      default:
        break;
    }
  }

  /** Carries out the sync engine's effects. */
  private run(effects: SyncEffect[]): void {
    for (const e of effects) {
      if (e.kind === 'deliver') this.emit('message', e.msg);
      else if (e.kind === 'ack') {
        if (e.seq > 0) this.raw({ type: 'ack', conv: e.conv, seq: e.seq });
      } else this.pull(e.conv, e.after);
    }
  }

  private pull(conv: string, after: number): void {
    this.request<{ msgs: Message[]; last_seq: number }>({ type: 'sync', conv, after, limit: this.opts.pullLimit })
      .then((r) => this.run(this.sync.onPulled(conv, r.msgs, r.last_seq)))
      .catch((e: RookeryError) => {
        this.sync.onPullFailed(conv);
        // on a live connection, try again soon (on a dead one the next connection pulls)
        if (e.code !== 'disconnected' && e.code !== 'forbidden' && e.code !== 'not_found') {
          setTimeout(() => this.run(this.sync.wantPull(conv)), 1000);
        }
      });
  }

  // ---- requests ----

  /** Sends a frame with a fresh `rid` and resolves with its reply (rejects with the `error`, or `timeout`). */
  request<T = Frame>(frame: Frame, timeoutMs = this.opts.requestTimeoutMs): Promise<T> {
    const rid = String(++this.rid);
    return new Promise<T>((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== OPEN) {
        reject(new RookeryError('disconnected', 'not connected'));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        reject(new RookeryError('timeout', `no reply to ${String(frame.type)} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(rid, { resolve: resolve as (f: Frame) => void, reject, timer });
      this.raw({ ...frame, rid });
    });
  }

  /** Resolves once connected (at once when already online). */
  async online(): Promise<void> {
    while (this.state !== 'online') {
      await new Promise<void>((resolve) => {
        const off = this.on('state', (s) => {
          if (s.state === 'online' || s.state === 'closed') {
            off();
            resolve();
          }
        });
      });
      if (this.closed) throw new RookeryError('disconnected', 'client closed');
    }
  }

  // ---- sending (through the outbox) ----

  /**
   * Queues a message and resolves with its `sent` once stored. The message keeps its `cid` until then, across
   * reconnects and (with a persistent store) reloads, so it is stored exactly once.
   */
  send(conv: string, body: Record<string, unknown>, extra: { reply_to?: number; mentions?: string[] } = {}): Promise<Sent> {
    const entry = this.queue(conv, body, extra);
    return this.whenSent(entry.cid);
  }

  /** Queues a message and returns its outbox entry at once (its `sent` comes as an event). */
  queue(conv: string, body: Record<string, unknown>, extra: { reply_to?: number; mentions?: string[] } = {}): OutboxEntry {
    const entry: OutboxEntry = { cid: newCid(), conv, body, created: Date.now(), ...extra };
    this.outbox.add(entry);
    void this.store.put(entry).catch(() => undefined);
    this.emit('outbox', this.outbox.entries());
    void this.pump();
    return entry;
  }

  /** Resolves when the outbox entry `cid` is acknowledged; rejects if the server refuses it for good. */
  whenSent(cid: string): Promise<Sent> {
    return new Promise((resolve, reject) => this.waiters.set(cid, { resolve, reject }));
  }

  /** Unsent messages, oldest first (failed ones carry `failed`). */
  pendingMessages(): OutboxEntry[] {
    return this.outbox.entries();
  }

  /** Tries a failed message again. */
  retry(cid: string): void {
    const e = this.outbox.retry(cid);
    if (e) void this.store.put(e).catch(() => undefined);
    this.emit('outbox', this.outbox.entries());
    void this.pump();
  }

  /** Gives up on an unsent message. */
  discard(cid: string): void {
    this.outbox.drop(cid);
    void this.store.remove(cid).catch(() => undefined);
    this.emit('outbox', this.outbox.entries());
  }

  private pumpRetry = 0;
  private async pump(): Promise<void> {
    await this.ready;
    if (this.state !== 'online') return;
    for (const e of this.outbox.due()) {
      const frame: Frame = { type: 'send', cid: e.cid, conv: e.conv, body: e.body };
      if (e.reply_to !== undefined) frame.reply_to = e.reply_to;
      if (e.mentions !== undefined) frame.mentions = e.mentions;
      this.request<Sent>(frame)
        .then((sent) => {
          this.pumpRetry = 0;
          this.outbox.onSent(e.cid);
          void this.store.remove(e.cid).catch(() => undefined);
          const s = { cid: e.cid, conv: e.conv, seq: sent.seq, ts: sent.ts };
          // our own message: the server does not push it to this device
          const me = this.user ?? '';
          this.run(this.sync.onMessage({ conv: e.conv, seq: sent.seq, from: me, cid: e.cid, ts: sent.ts, body: e.body, ...(e.reply_to !== undefined ? { reply_to: e.reply_to } : {}), ...(e.mentions ? { mentions: e.mentions } : {}) }));
          this.emit('sent', { ...s, body: e.body });
          this.emit('outbox', this.outbox.entries());
          this.waiters.get(e.cid)?.resolve(s);
          this.waiters.delete(e.cid);
          void this.pump();
        })
        .catch((err: RookeryError) => {
          const verdict = this.outbox.onError(e.cid, err.code);
          if (verdict === 'failed') {
            void this.store.put({ ...e, failed: err.code }).catch(() => undefined);
            this.emit('failed', { ...e, code: err.code });
            this.emit('outbox', this.outbox.entries());
            this.waiters.get(e.cid)?.reject(err);
            this.waiters.delete(e.cid);
            void this.pump();
          } else if (err.code !== 'disconnected') {
            const delay = backoffDelay(this.pumpRetry++, { baseMs: 250, maxMs: 5_000 });
            if (this.retryTimer) clearTimeout(this.retryTimer);
            this.retryTimer = setTimeout(() => void this.pump(), delay);
          }
        });
    }
  }

  // ---- the rest of the contract ----

  convs(): Promise<ConvSummary[]> {
    return this.request<{ convs: ConvSummary[] }>({ type: 'convs' }).then((r) => r.convs);
  }
  /** Messages of `conv`: `{after}` (newer than) or `{before}` (history just below), at most `limit`. */
  history(conv: string, q: { after?: number; before?: number; limit?: number } = {}): Promise<{ msgs: Message[]; last_seq: number }> {
    return this.request({ type: 'sync', conv, ...q });
  }
  read(conv: string, seq: number): void {
    this.raw({ type: 'read', conv, seq });
  }
  typing(conv: string): void {
    this.raw({ type: 'typing', conv });
  }
  receipts(conv: string, seq: number, counts = false): Promise<Receipts> {
    return this.request({ type: 'receipts', conv, seq, ...(counts ? { counts: true } : {}) });
  }
  friends(): Promise<Friends> {
    return this.request({ type: 'friends' });
  }
  friendRequest(user: string, note?: string): Promise<Frame> {
    return this.request({ type: 'friend_request', user, ...(note ? { note } : {}) });
  }
  friendAccept(user: string): Promise<Frame> {
    return this.request({ type: 'friend_accept', user });
  }
  friendDecline(user: string): Promise<Frame> {
    return this.request({ type: 'friend_decline', user });
  }
  friendRemove(user: string): Promise<Frame> {
    return this.request({ type: 'friend_remove', user });
  }
  groupCreate(conv: string, name: string, members: string[]): Promise<Group> {
    return this.request<Group>({ type: 'group_create', conv, name, members }).then((g) => this.pulled(conv, g));
  }
  groupAdd(conv: string, members: string[]): Promise<Group> {
    return this.request<Group>({ type: 'group_add', conv, members }).then((g) => this.pulled(conv, g));
  }
  groupRemove(conv: string, members: string[]): Promise<Group> {
    return this.request<Group>({ type: 'group_remove', conv, members }).then((g) => this.pulled(conv, g));
  }
  /**
   * A change this device made stored a system message that is not pushed to this device: pull it, so it comes
   * as a `message` event like everyone else's copy.
   */
  private pulled<T>(conv: string, reply: T): T {
    this.run(this.sync.onNotify(conv, this.sync.have(conv) + 1));
    return reply;
  }
  groupLeave(conv: string): Promise<Frame> {
    return this.request({ type: 'group_leave', conv });
  }
  groupInfo(conv: string, members = false): Promise<Group> {
    return this.request({ type: 'group_info', conv, ...(members ? { members: true } : {}) });
  }
  recall(conv: string, seq: number): Promise<Frame> {
    return this.request({ type: 'recall', conv, seq });
  }
  /** Edits a message (servers without `edit` answer `bad_request`). */
  edit(conv: string, seq: number, body: Record<string, unknown>): Promise<Frame> {
    return this.request({ type: 'edit', conv, seq, body });
  }
  /** Adds or takes back a reaction (servers without `react` answer `bad_request`). */
  react(conv: string, seq: number, emoji: string, on = true): Promise<Frame> {
    return this.request({ type: 'react', conv, seq, emoji, on });
  }

  /**
   * Whether the server knows a frame type: it answers an unknown type with `bad_request` "unknown ..." and a
   * known one with a different error for a frame aimed at nothing (a message that does not exist).
   */
  async supports(type: 'edit' | 'react'): Promise<boolean> {
    const probe: Frame =
      type === 'edit'
        ? { type, conv: 'dm:-:-', seq: 0, body: {} }
        : { type, conv: 'dm:-:-', seq: 0, emoji: '?', on: true };
    try {
      await this.request(probe, 5_000);
      return true;
    } catch (e) {
      const err = e as RookeryError;
      if (err.code === 'disconnected' || err.code === 'timeout') throw err;
      return !(err.code === 'bad_request' && /unknown/i.test(err.message));
    }
  }

  /** The direct conversation of this user and `other`. */
  dmWith(other: string): string {
    return dmId(this.user ?? '', other);
  }

  // ---- media ----

  /** Uploads media (chunked, resumable, deduplicated) and returns its id. */
  upload(data: Blob | ArrayBuffer | Uint8Array, opts: UploadOptions): Promise<string> {
    return uploadMedia({ base: this.baseUrl, token: this.opts.token, fetch: this.opts.fetch ?? fetch.bind(globalThis) }, data, opts);
  }

  /** A URL of a media item (or its thumbnail) usable in `<img src>` (the token rides in the query). */
  mediaUrl(id: string, thumb = false): string {
    return `${this.baseUrl}/v1/media/${encodeURIComponent(id)}${thumb ? '/thumb' : ''}?token=${encodeURIComponent(this.opts.token)}`;
  }
}

/** `dm:A:B` with A < B in byte order. */
export function dmId(a: string, b: string): string {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}

/** The user id (`sub`) of a token, read without checking it (the server checks). */
export function userOfToken(token: string): string | null {
  try {
    const part = token.split('.')[1];
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.sub === 'string' ? json.sub : null;
  } catch {
    return null;
  }
}

function parse(data: unknown): Frame | null {
  try {
    const text = typeof data === 'string' ? data : String(data);
    const v = JSON.parse(text);
    return v && typeof v === 'object' ? (v as Frame) : null;
  } catch {
    return null;
  }
}

/** `listen` as given by `/v1/nodes`, with an unspecified host (0.0.0.0, [::]) replaced by the base's host. */
function hostOf(base: string, listen: string): string {
  const u = new URL(base);
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) return listen;
  const host = m[1] === '0.0.0.0' || m[1] === '[::]' || m[1] === '' ? u.hostname : m[1];
  return `${host}:${m[2]}`;
}

function wsOf(base: string, listen: string): string {
  const secure = base.startsWith('https:');
  return `${secure ? 'wss' : 'ws'}://${hostOf(base, listen)}/ws`;
}

function httpOf(base: string, listen: string): string {
  const secure = base.startsWith('https:');
  return `${secure ? 'https' : 'http'}://${hostOf(base, listen)}`;
}
