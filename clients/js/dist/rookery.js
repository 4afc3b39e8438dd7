// Rookery JavaScript client library (ES module). Built from clients/js/src by `npm run build`.
var __defProp = Object.defineProperty;
var __defNormalProp = (obj, key, value) => key in obj ? __defProp(obj, key, { enumerable: true, configurable: true, writable: true, value }) : obj[key] = value;
var __publicField = (obj, key, value) => __defNormalProp(obj, typeof key !== "symbol" ? key + "" : key, value);

// clients/js/src/backoff.ts
var DEFAULT_BACKOFF = { baseMs: 500, maxMs: 3e4 };
function backoffDelay(attempt, opts = DEFAULT_BACKOFF, random = Math.random) {
  const exp = Math.min(Math.max(0, attempt), 30);
  const ceiling = Math.min(opts.maxMs, opts.baseMs * 2 ** exp);
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}

// clients/js/src/outbox.ts
var RETRYABLE = /* @__PURE__ */ new Set(["unavailable", "rate_limited", "timeout", "disconnected", "internal"]);
var Outbox = class {
  constructor() {
    __publicField(this, "list", []);
    __publicField(this, "inflight", /* @__PURE__ */ new Set());
  }
  /** Entries loaded from a store, in creation order (repeats of a cid are ignored). */
  restore(entries) {
    for (const e of [...entries].sort((a, b) => a.created - b.created)) {
      if (!this.list.some((x) => x.cid === e.cid)) this.list.push(e);
    }
  }
  add(entry) {
    this.list.push(entry);
  }
  entries() {
    return [...this.list];
  }
  get(cid) {
    return this.list.find((e) => e.cid === cid);
  }
  /**
   * The entries to send now, marked in flight: per conversation the oldest unfailed entry, unless it is already
   * in flight (one at a time per conversation keeps their order; conversations go in parallel).
   */
  due() {
    const out = [];
    const seen = /* @__PURE__ */ new Set();
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
  onSent(cid) {
    this.inflight.delete(cid);
    const i = this.list.findIndex((e) => e.cid === cid);
    if (i < 0) return void 0;
    return this.list.splice(i, 1)[0];
  }
  /** An error answer for `cid`: `retry` (sent again by a later `due`) or `failed` (kept, marked, skipped). */
  onError(cid, code) {
    this.inflight.delete(cid);
    if (RETRYABLE.has(code)) return "retry";
    const e = this.get(cid);
    if (e) e.failed = code;
    return "failed";
  }
  /** The connection dropped: nothing is in flight; every entry goes again on the next connection. */
  onDisconnect() {
    this.inflight.clear();
  }
  /** A failed entry is tried again. */
  retry(cid) {
    const e = this.get(cid);
    if (e) delete e.failed;
    return e;
  }
  /** Removes an entry (e.g. a failed one the user gave up on). */
  drop(cid) {
    this.inflight.delete(cid);
    const i = this.list.findIndex((e) => e.cid === cid);
    return i < 0 ? void 0 : this.list.splice(i, 1)[0];
  }
};
var MemoryOutboxStore = class {
  constructor() {
    __publicField(this, "map", /* @__PURE__ */ new Map());
  }
  async load() {
    return [...this.map.values()].map((e) => ({ ...e }));
  }
  async put(entry) {
    this.map.set(entry.cid, { ...entry });
  }
  async remove(cid) {
    this.map.delete(cid);
  }
};
var IndexedDbOutboxStore = class {
  constructor(user, dbName = "rookery-outbox") {
    __publicField(this, "db");
    __publicField(this, "name");
    this.name = user;
    this.db = new Promise((resolve, reject) => {
      const req = indexedDB.open(`${dbName}:${user}`, 1);
      req.onupgradeneeded = () => req.result.createObjectStore("outbox", { keyPath: "cid" });
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  async run(mode, f) {
    const db = await this.db;
    return new Promise((resolve, reject) => {
      const tx = db.transaction("outbox", mode);
      const req = f(tx.objectStore("outbox"));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }
  async load() {
    return this.run("readonly", (s) => s.getAll());
  }
  async put(entry) {
    await this.run("readwrite", (s) => s.put(entry));
  }
  async remove(cid) {
    await this.run("readwrite", (s) => s.delete(cid));
  }
  toString() {
    return `IndexedDbOutboxStore(${this.name})`;
  }
};

// clients/js/src/sync.ts
var MAX_HELD = 1e3;
var NEW_CONV_BACKLOG = 50;
var SyncEngine = class {
  constructor() {
    __publicField(this, "convs", /* @__PURE__ */ new Map());
    /** False until the first conversation list: what exists then is history, not news. */
    __publicField(this, "listed", false);
  }
  /** The highest contiguous seq of `conv` this client has (0 when unknown). */
  have(conv) {
    return this.convs.get(conv)?.have ?? 0;
  }
  /** Whether the conversation is known (listed or seen). */
  knows(conv) {
    return this.convs.has(conv);
  }
  conv(conv, have) {
    let c = this.convs.get(conv);
    if (!c) {
      c = { have, target: have, held: /* @__PURE__ */ new Map(), pulling: false };
      this.convs.set(conv, c);
    }
    return c;
  }
  /** A pushed `msg`. */
  onMessage(msg) {
    const c = this.conv(msg.conv, Math.max(0, msg.seq - 1));
    return this.take(c, msg, true);
  }
  /** Feeds one message; `fromPush` pulls when it reveals a gap. */
  take(c, msg, fromPush) {
    const effects = [];
    c.target = Math.max(c.target, msg.seq);
    if (msg.seq <= c.have || c.held.has(msg.seq)) {
      effects.push({ kind: "ack", conv: msg.conv, seq: c.have });
      return effects;
    }
    if (msg.seq === c.have + 1) {
      effects.push({ kind: "deliver", msg });
      c.have = msg.seq;
      for (let next = c.held.get(c.have + 1); next; next = c.held.get(c.have + 1)) {
        c.held.delete(next.seq);
        effects.push({ kind: "deliver", msg: next });
        c.have = next.seq;
      }
      effects.push({ kind: "ack", conv: msg.conv, seq: c.have });
      return effects;
    }
    if (c.held.size < MAX_HELD) c.held.set(msg.seq, msg);
    if (fromPush) effects.push(...this.pullIfNeeded(msg.conv, c));
    return effects;
  }
  /** A pull of `conv` if the server is known to have more than this client (e.g. to retry a failed pull). */
  wantPull(conv) {
    const c = this.convs.get(conv);
    return c ? this.pullIfNeeded(conv, c) : [];
  }
  pullIfNeeded(conv, c) {
    if (c.pulling || c.target <= c.have) return [];
    c.pulling = true;
    return [{ kind: "pull", conv, after: c.have }];
  }
  /** `notify`: the server has messages up to `lastSeq`. */
  onNotify(conv, lastSeq) {
    const c = this.conv(conv, this.listed ? 0 : lastSeq);
    c.target = Math.max(c.target, lastSeq);
    return this.pullIfNeeded(conv, c);
  }
  /**
   * A `convs` reply after (re)connecting. On the first one, what exists is history (nothing is pulled); later,
   * every conversation whose `last_seq` moved past what this client has is pulled.
   */
  onConvs(list) {
    const effects = [];
    const first = !this.listed;
    this.listed = true;
    for (const s of list) {
      const known = this.convs.get(s.conv);
      if (!known) {
        const have = first ? s.last_seq : Math.max(0, s.last_seq - NEW_CONV_BACKLOG);
        const c = this.conv(s.conv, have);
        c.target = s.last_seq;
        effects.push(...this.pullIfNeeded(s.conv, c));
        continue;
      }
      known.target = Math.max(known.target, s.last_seq);
      effects.push(...this.pullIfNeeded(s.conv, known));
    }
    return effects;
  }
  /** A `msgs` reply to a pull made for `after`. Pulls again while the server has more. */
  onPulled(conv, msgs, lastSeq) {
    const c = this.conv(conv, 0);
    c.pulling = false;
    c.target = Math.max(c.target, lastSeq);
    const effects = [];
    for (const m of msgs) effects.push(...this.take(c, m, false));
    const acks = effects.filter((e) => e.kind === "ack");
    const rest = effects.filter((e) => e.kind !== "ack");
    if (acks.length > 0) rest.push({ kind: "ack", conv, seq: c.have });
    if (c.target > c.have && msgs.length > 0) rest.push(...this.pullIfNeeded(conv, c));
    return rest;
  }
  /** A pull failed (error, timeout, disconnect): it may be asked again later. */
  onPullFailed(conv) {
    const c = this.convs.get(conv);
    if (c) c.pulling = false;
  }
  /** The connection dropped: no pull is in flight any more. */
  onDisconnect() {
    for (const c of this.convs.values()) c.pulling = false;
  }
};

// clients/js/src/types.ts
var RookeryError = class extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    __publicField(this, "code");
    this.name = "RookeryError";
    this.code = code;
  }
};

// clients/js/src/upload.ts
async function sha256Hex(data) {
  const digest = await crypto.subtle.digest("SHA-256", data);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
async function toBytes(data) {
  if (data instanceof Uint8Array) return new Uint8Array(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return new Uint8Array(await data.arrayBuffer());
}
var sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function call(http, method, path, body, tries, contentType) {
  let last;
  for (let i = 0; i < tries; i++) {
    if (i > 0) await sleep(200 * 2 ** i);
    try {
      const headers = { Authorization: `Bearer ${http.token}` };
      if (contentType) headers["Content-Type"] = contentType;
      const res = await http.fetch(`${http.base}${path}`, { method, headers, body });
      const text = await res.text();
      if (res.status >= 500) {
        last = new RookeryError("unavailable", `${method} ${path}: HTTP ${res.status}`);
        continue;
      }
      let json = {};
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
  throw last instanceof RookeryError ? last : new RookeryError("unavailable", String(last));
}
function fail(status, json, what) {
  const code = typeof json.error === "string" ? json.error : `http_${status}`;
  const message = typeof json.message === "string" ? json.message : `${what}: HTTP ${status}`;
  throw new RookeryError(code, message);
}
async function uploadMedia(http, data, opts) {
  const bytes = await toBytes(data);
  const tries = opts.tries ?? 4;
  const sha256 = await sha256Hex(bytes);
  const request = {
    size: bytes.length,
    sha256,
    mime: opts.mime,
    name: opts.name ?? "file"
  };
  let start = await call(http, "POST", "/v1/uploads", JSON.stringify(request), tries, "application/json");
  if (start.status === 200 && start.json.proof && typeof start.json.proof === "object") {
    const { offset, length } = start.json.proof;
    request.proof = await sha256Hex(bytes.subarray(offset, offset + length));
    start = await call(http, "POST", "/v1/uploads", JSON.stringify(request), tries, "application/json");
  }
  if (start.status === 200 && typeof start.json.media === "string") {
    opts.onProgress?.(bytes.length, bytes.length);
    return start.json.media;
  }
  if (start.status !== 201 || typeof start.json.upload !== "string") fail(start.status, start.json, "upload");
  const upload = start.json.upload;
  const chunk = Number(start.json.chunk_size);
  const count = Math.max(1, Math.ceil(bytes.length / chunk));
  let received = new Set(start.json.received ?? []);
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < count; i++) {
      if (received.has(i)) continue;
      const part = bytes.subarray(i * chunk, Math.min(bytes.length, (i + 1) * chunk));
      const put = await call(http, "PUT", `/v1/uploads/${upload}/${i}`, part, tries, "application/octet-stream");
      if (put.status !== 204 && put.status !== 200) fail(put.status, put.json, "chunk");
      received.add(i);
      opts.onProgress?.(Math.min(bytes.length, received.size * chunk), bytes.length);
    }
    const done = await call(http, "POST", `/v1/uploads/${upload}/complete`, void 0, tries);
    if (done.status === 200 && typeof done.json.media === "string") return done.json.media;
    if (done.status !== 409) fail(done.status, done.json, "complete");
    const missing = new Set(done.json.missing ?? []);
    received = new Set([...Array(count).keys()].filter((i) => !missing.has(i)));
  }
  throw new RookeryError("internal", "upload: chunks still missing after three rounds");
}

// clients/js/src/client.ts
var OPEN = 1;
var STABLE_SESSION_MS = 5e3;
function newCid() {
  const rand = Math.floor(Math.random() * 2 ** 48).toString(36);
  return `c-${Date.now().toString(36)}-${rand}`;
}
var RookeryClient = class {
  constructor(options) {
    __publicField(this, "opts");
    /** The receive state per conversation (what has been delivered, gaps, pulls). */
    __publicField(this, "sync", new SyncEngine());
    __publicField(this, "outbox", new Outbox());
    __publicField(this, "store");
    __publicField(this, "listeners", /* @__PURE__ */ new Map());
    __publicField(this, "pending", /* @__PURE__ */ new Map());
    __publicField(this, "waiters", /* @__PURE__ */ new Map());
    __publicField(this, "ws", null);
    __publicField(this, "rid", 0);
    __publicField(this, "closed", false);
    __publicField(this, "kicked", false);
    __publicField(this, "running", false);
    __publicField(this, "wake", null);
    __publicField(this, "knownNodes", []);
    __publicField(this, "heartbeat", null);
    __publicField(this, "retryTimer", null);
    __publicField(this, "lastHeard", 0);
    __publicField(this, "lastSent", 0);
    __publicField(this, "firstWelcome");
    __publicField(this, "resolveFirst");
    __publicField(this, "rejectFirst");
    /** The outbox as loaded from its store (sends wait for it). */
    __publicField(this, "ready");
    __publicField(this, "state", "idle");
    __publicField(this, "welcome", null);
    /** Which node this client is connected to (or last was). */
    __publicField(this, "node", null);
    __publicField(this, "browserHooked", false);
    __publicField(this, "pumpRetry", 0);
    this.opts = { requestTimeoutMs: 1e4, connectTimeoutMs: 5e3, pullLimit: 200, ...options };
    this.store = options.outboxStore ?? (typeof indexedDB !== "undefined" ? new IndexedDbOutboxStore(userOfToken(options.token) ?? "anonymous") : new MemoryOutboxStore());
    this.ready = this.store.load().then((entries) => {
      this.outbox.restore(entries);
      this.emit("outbox", this.outbox.entries());
    }).catch(() => void 0);
    this.firstWelcome = new Promise((resolve, reject) => {
      this.resolveFirst = resolve;
      this.rejectFirst = reject;
    });
    this.firstWelcome.catch(() => void 0);
  }
  // ---- events ----
  on(event, fn) {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, set = /* @__PURE__ */ new Set());
    set.add(fn);
    return () => set?.delete(fn);
  }
  emit(event, payload) {
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        fn(payload);
      } catch (e) {
        console.error(`rookery: ${event} listener failed`, e);
      }
    }
  }
  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, node: this.node ?? void 0, ...extra });
  }
  // ---- connection ----
  /** The HTTP address requests go to. */
  get baseUrl() {
    if (this.opts.url) return this.opts.url.replace(/\/$/, "");
    if (typeof location !== "undefined") return location.origin;
    throw new RookeryError("bad_request", "no url given (required outside a browser)");
  }
  get user() {
    return this.welcome?.user ?? userOfToken(this.opts.token);
  }
  /** Starts connecting (and reconnecting until `close`); resolves with the first `welcome`. */
  connect() {
    if (!this.running) {
      this.running = true;
      this.listenToBrowser();
      void this.loop();
    }
    return this.firstWelcome;
  }
  /** Closes the connection for good. */
  close() {
    this.closed = true;
    this.wake?.();
    this.ws?.close(1e3, "closed");
    this.stopHeartbeat();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.setState("closed");
  }
  /** Drops the connection now and reconnects (the outbox and pulls carry on). For tests and "retry now". */
  reconnect() {
    this.ws?.close(4e3, "reconnect");
    this.wake?.();
  }
  listenToBrowser() {
    const g = globalThis;
    if (this.browserHooked || typeof g.addEventListener !== "function" || typeof navigator === "undefined") return;
    this.browserHooked = true;
    g.addEventListener("offline", () => {
      this.ws?.close(4001, "offline");
    });
    g.addEventListener("online", () => this.wake?.());
  }
  isOffline() {
    return typeof navigator !== "undefined" && navigator.onLine === false;
  }
  waitForWake(ms) {
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
  async loop() {
    let attempt = 0;
    while (!this.closed && !this.kicked) {
      if (this.isOffline()) {
        this.setState("offline");
        await this.waitForWake(5e3);
        continue;
      }
      this.setState("connecting");
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
          if (e instanceof RookeryError && e.code === "unauthorized") {
            this.rejectFirst(e);
            this.closed = true;
            this.setState("closed");
            return;
          }
        }
      }
      if (this.closed || this.kicked) break;
      if (lasted >= STABLE_SESSION_MS) {
        attempt = 0;
        continue;
      }
      const delay = backoffDelay(attempt++, this.opts.backoff ?? DEFAULT_BACKOFF);
      this.setState("waiting", { retryInMs: delay });
      await this.waitForWake(delay);
    }
  }
  /** WebSocket URLs to try, best first: the preferred node, then the up nodes by fewest connections. */
  async candidates() {
    const base = this.baseUrl;
    let nodes = null;
    const bases = [base, ...this.knownNodes.map((n) => httpOf(base, n.listen))];
    for (const b of [...new Set(bases)]) {
      try {
        const res = await this.fetchWithTimeout(`${b}/v1/nodes`, 3e3);
        if (res.ok) {
          nodes = await res.json();
          break;
        }
      } catch {
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
  async fetchWithTimeout(url, ms) {
    const f = this.opts.fetch ?? fetch;
    const ctl = typeof AbortController !== "undefined" ? new AbortController() : null;
    const timer = setTimeout(() => ctl?.abort(), ms);
    try {
      return await f(url, { signal: ctl?.signal });
    } finally {
      clearTimeout(timer);
    }
  }
  /** Opens one socket and authenticates; resolves once `welcome` arrived. */
  open(url) {
    const Ctor = this.opts.WebSocket ?? globalThis.WebSocket;
    if (!Ctor) throw new RookeryError("bad_request", "no WebSocket implementation: pass options.WebSocket");
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new Ctor(url);
      } catch (e) {
        reject(new RookeryError("unavailable", String(e)));
        return;
      }
      const timer = setTimeout(() => {
        ws.close();
        reject(new RookeryError("timeout", `no welcome from ${url}`));
      }, this.opts.connectTimeoutMs);
      ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: this.opts.token, device: this.opts.device }));
      ws.onerror = () => void 0;
      ws.onclose = () => {
        clearTimeout(timer);
        reject(new RookeryError("unavailable", `cannot connect to ${url}`));
      };
      ws.onmessage = (ev) => {
        const frame = parse(ev.data);
        if (!frame) return;
        if (frame.type === "welcome") {
          clearTimeout(timer);
          this.welcome = frame;
          resolve(ws);
        } else if (frame.type === "error") {
          clearTimeout(timer);
          ws.close();
          reject(new RookeryError(String(frame.code), String(frame.message ?? "")));
        }
      };
    });
  }
  /** Runs an authenticated socket until it closes. */
  serve(ws) {
    return new Promise((resolve) => {
      this.ws = ws;
      const welcome = this.welcome;
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
          p.reject(new RookeryError("disconnected", "the connection closed"));
          this.pending.delete(rid);
        }
        if (!this.closed && !this.kicked) this.setState("connecting");
        resolve();
      };
      this.startHeartbeat(welcome.heartbeat_s);
      this.setState("online");
      this.emit("welcome", welcome);
      this.resolveFirst(welcome);
      void this.afterConnect();
    });
  }
  /** After each (re)connect: the conversation list, pulls of whatever moved, then the outbox. */
  async afterConnect() {
    await this.ready;
    void this.pump();
    try {
      const list = await this.convs();
      this.run(this.sync.onConvs(list));
      this.emit("convs", list);
    } catch {
    }
  }
  startHeartbeat(heartbeatS) {
    this.stopHeartbeat();
    const every = Math.max(1, heartbeatS) * 1e3;
    const deadAfter = 3 * every;
    this.lastSent = Date.now();
    this.heartbeat = setInterval(
      () => {
        const now = Date.now();
        if (now - this.lastHeard > deadAfter) {
          this.ws?.close(4002, "heartbeat timeout");
          return;
        }
        if (now - this.lastSent >= every - 250) this.raw({ type: "ping" });
      },
      Math.min(every, 1e3)
    );
  }
  stopHeartbeat() {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }
  raw(frame) {
    if (!this.ws || this.ws.readyState !== OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    this.lastSent = Date.now();
    return true;
  }
  // ---- incoming frames ----
  dispatch(frame) {
    this.emit("frame", frame);
    const rid = frame.rid;
    if (rid !== void 0 && rid !== null) {
      const p = this.pending.get(String(rid));
      if (p) {
        this.pending.delete(String(rid));
        clearTimeout(p.timer);
        if (frame.type === "error") p.reject(new RookeryError(String(frame.code), String(frame.message ?? "")));
        else p.resolve(frame);
        return;
      }
    }
    switch (frame.type) {
      case "msg":
        this.run(this.sync.onMessage(frame));
        break;
      case "notify":
        this.run(this.sync.onNotify(String(frame.conv), Number(frame.last_seq)));
        break;
      case "kicked":
        this.kicked = true;
        this.emit("kicked", {});
        this.setState("closed");
        break;
      case "delivered":
      case "read":
      case "typing":
      case "presence":
      case "friend_request":
      case "friend":
      case "recalled":
      case "edited":
      case "reaction":
        this.emit(frame.type, frame);
        break;
      default:
        break;
    }
  }
  /** Carries out the sync engine's effects. */
  run(effects) {
    for (const e of effects) {
      if (e.kind === "deliver") this.emit("message", e.msg);
      else if (e.kind === "ack") {
        if (e.seq > 0) this.raw({ type: "ack", conv: e.conv, seq: e.seq });
      } else this.pull(e.conv, e.after);
    }
  }
  pull(conv, after) {
    this.request({ type: "sync", conv, after, limit: this.opts.pullLimit }).then((r) => this.run(this.sync.onPulled(conv, r.msgs, r.last_seq))).catch((e) => {
      this.sync.onPullFailed(conv);
      if (e.code !== "disconnected" && e.code !== "forbidden" && e.code !== "not_found") {
        setTimeout(() => this.run(this.sync.wantPull(conv)), 1e3);
      }
    });
  }
  // ---- requests ----
  /** Sends a frame with a fresh `rid` and resolves with its reply (rejects with the `error`, or `timeout`). */
  request(frame, timeoutMs = this.opts.requestTimeoutMs) {
    const rid = String(++this.rid);
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== OPEN) {
        reject(new RookeryError("disconnected", "not connected"));
        return;
      }
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        reject(new RookeryError("timeout", `no reply to ${String(frame.type)} in ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(rid, { resolve, reject, timer });
      this.raw({ ...frame, rid });
    });
  }
  /** Resolves once connected (at once when already online). */
  async online() {
    while (this.state !== "online") {
      await new Promise((resolve) => {
        const off = this.on("state", (s) => {
          if (s.state === "online" || s.state === "closed") {
            off();
            resolve();
          }
        });
      });
      if (this.closed) throw new RookeryError("disconnected", "client closed");
    }
  }
  // ---- sending (through the outbox) ----
  /**
   * Queues a message and resolves with its `sent` once stored. The message keeps its `cid` until then, across
   * reconnects and (with a persistent store) reloads, so it is stored exactly once.
   */
  send(conv, body, extra = {}) {
    const entry = this.queue(conv, body, extra);
    return this.whenSent(entry.cid);
  }
  /** Queues a message and returns its outbox entry at once (its `sent` comes as an event). */
  queue(conv, body, extra = {}) {
    const entry = { cid: newCid(), conv, body, created: Date.now(), ...extra };
    this.outbox.add(entry);
    void this.store.put(entry).catch(() => void 0);
    this.emit("outbox", this.outbox.entries());
    void this.pump();
    return entry;
  }
  /** Resolves when the outbox entry `cid` is acknowledged; rejects if the server refuses it for good. */
  whenSent(cid) {
    return new Promise((resolve, reject) => this.waiters.set(cid, { resolve, reject }));
  }
  /** Unsent messages, oldest first (failed ones carry `failed`). */
  pendingMessages() {
    return this.outbox.entries();
  }
  /** Tries a failed message again. */
  retry(cid) {
    const e = this.outbox.retry(cid);
    if (e) void this.store.put(e).catch(() => void 0);
    this.emit("outbox", this.outbox.entries());
    void this.pump();
  }
  /** Gives up on an unsent message. */
  discard(cid) {
    this.outbox.drop(cid);
    void this.store.remove(cid).catch(() => void 0);
    this.emit("outbox", this.outbox.entries());
  }
  async pump() {
    await this.ready;
    if (this.state !== "online") return;
    for (const e of this.outbox.due()) {
      const frame = { type: "send", cid: e.cid, conv: e.conv, body: e.body };
      if (e.reply_to !== void 0) frame.reply_to = e.reply_to;
      if (e.mentions !== void 0) frame.mentions = e.mentions;
      this.request(frame).then((sent) => {
        this.pumpRetry = 0;
        this.outbox.onSent(e.cid);
        void this.store.remove(e.cid).catch(() => void 0);
        const s = { cid: e.cid, conv: e.conv, seq: sent.seq, ts: sent.ts };
        const me = this.user ?? "";
        this.run(this.sync.onMessage({ conv: e.conv, seq: sent.seq, from: me, cid: e.cid, ts: sent.ts, body: e.body, ...e.reply_to !== void 0 ? { reply_to: e.reply_to } : {}, ...e.mentions ? { mentions: e.mentions } : {} }));
        this.emit("sent", { ...s, body: e.body });
        this.emit("outbox", this.outbox.entries());
        this.waiters.get(e.cid)?.resolve(s);
        this.waiters.delete(e.cid);
        void this.pump();
      }).catch((err) => {
        const verdict = this.outbox.onError(e.cid, err.code);
        if (verdict === "failed") {
          void this.store.put({ ...e, failed: err.code }).catch(() => void 0);
          this.emit("failed", { ...e, code: err.code });
          this.emit("outbox", this.outbox.entries());
          this.waiters.get(e.cid)?.reject(err);
          this.waiters.delete(e.cid);
          void this.pump();
        } else if (err.code !== "disconnected") {
          const delay = backoffDelay(this.pumpRetry++, { baseMs: 250, maxMs: 5e3 });
          if (this.retryTimer) clearTimeout(this.retryTimer);
          this.retryTimer = setTimeout(() => void this.pump(), delay);
        }
      });
    }
  }
  // ---- the rest of the contract ----
  convs() {
    return this.request({ type: "convs" }).then((r) => r.convs);
  }
  /** Messages of `conv`: `{after}` (newer than) or `{before}` (history just below), at most `limit`. */
  history(conv, q = {}) {
    return this.request({ type: "sync", conv, ...q });
  }
  read(conv, seq) {
    this.raw({ type: "read", conv, seq });
  }
  typing(conv) {
    this.raw({ type: "typing", conv });
  }
  receipts(conv, seq, counts = false) {
    return this.request({ type: "receipts", conv, seq, ...counts ? { counts: true } : {} });
  }
  friends() {
    return this.request({ type: "friends" });
  }
  friendRequest(user, note) {
    return this.request({ type: "friend_request", user, ...note ? { note } : {} });
  }
  friendAccept(user) {
    return this.request({ type: "friend_accept", user });
  }
  friendDecline(user) {
    return this.request({ type: "friend_decline", user });
  }
  friendRemove(user) {
    return this.request({ type: "friend_remove", user });
  }
  groupCreate(conv, name, members) {
    return this.request({ type: "group_create", conv, name, members }).then((g) => this.pulled(conv, g));
  }
  groupAdd(conv, members) {
    return this.request({ type: "group_add", conv, members }).then((g) => this.pulled(conv, g));
  }
  groupRemove(conv, members) {
    return this.request({ type: "group_remove", conv, members }).then((g) => this.pulled(conv, g));
  }
  /**
   * A change this device made stored a system message that is not pushed to this device: pull it, so it comes
   * as a `message` event like everyone else's copy.
   */
  pulled(conv, reply) {
    this.run(this.sync.onNotify(conv, this.sync.have(conv) + 1));
    return reply;
  }
  groupLeave(conv) {
    return this.request({ type: "group_leave", conv });
  }
  groupInfo(conv, members = false) {
    return this.request({ type: "group_info", conv, ...members ? { members: true } : {} });
  }
  recall(conv, seq) {
    return this.request({ type: "recall", conv, seq });
  }
  /** Edits a message (servers without `edit` answer `bad_request`). */
  edit(conv, seq, body) {
    return this.request({ type: "edit", conv, seq, body });
  }
  /** Adds or takes back a reaction (servers without `react` answer `bad_request`). */
  react(conv, seq, emoji, on = true) {
    return this.request({ type: "react", conv, seq, emoji, on });
  }
  /**
   * Whether the server knows a frame type: it answers an unknown type with `bad_request` "unknown ..." and a
   * known one with a different error for a frame aimed at nothing (a message that does not exist).
   */
  async supports(type) {
    const probe = type === "edit" ? { type, conv: "dm:-:-", seq: 0, body: {} } : { type, conv: "dm:-:-", seq: 0, emoji: "?", on: true };
    try {
      await this.request(probe, 5e3);
      return true;
    } catch (e) {
      const err = e;
      if (err.code === "disconnected" || err.code === "timeout") throw err;
      return !(err.code === "bad_request" && /unknown/i.test(err.message));
    }
  }
  /** The direct conversation of this user and `other`. */
  dmWith(other) {
    return dmId(this.user ?? "", other);
  }
  // ---- media ----
  /** Uploads media (chunked, resumable, deduplicated) and returns its id. */
  upload(data, opts) {
    return uploadMedia({ base: this.baseUrl, token: this.opts.token, fetch: this.opts.fetch ?? fetch.bind(globalThis) }, data, opts);
  }
  /** A URL of a media item (or its thumbnail) usable in `<img src>` (the token rides in the query). */
  mediaUrl(id, thumb = false) {
    return `${this.baseUrl}/v1/media/${encodeURIComponent(id)}${thumb ? "/thumb" : ""}?token=${encodeURIComponent(this.opts.token)}`;
  }
};
function dmId(a, b) {
  return a < b ? `dm:${a}:${b}` : `dm:${b}:${a}`;
}
function userOfToken(token) {
  try {
    const part = token.split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - b64.length % 4) % 4)));
    return typeof json.sub === "string" ? json.sub : null;
  } catch {
    return null;
  }
}
function parse(data) {
  try {
    const text = typeof data === "string" ? data : String(data);
    const v = JSON.parse(text);
    return v && typeof v === "object" ? v : null;
  } catch {
    return null;
  }
}
function hostOf(base, listen) {
  const u = new URL(base);
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) return listen;
  const host = m[1] === "0.0.0.0" || m[1] === "[::]" || m[1] === "" ? u.hostname : m[1];
  return `${host}:${m[2]}`;
}
function wsOf(base, listen) {
  const secure = base.startsWith("https:");
  return `${secure ? "wss" : "ws"}://${hostOf(base, listen)}/ws`;
}
function httpOf(base, listen) {
  const secure = base.startsWith("https:");
  return `${secure ? "https" : "http"}://${hostOf(base, listen)}`;
}
export {
  DEFAULT_BACKOFF,
  IndexedDbOutboxStore,
  MAX_HELD,
  MemoryOutboxStore,
  NEW_CONV_BACKLOG,
  Outbox,
  RETRYABLE,
  RookeryClient,
  RookeryError,
  SyncEngine,
  backoffDelay,
  dmId,
  newCid,
  sha256Hex,
  uploadMedia,
  userOfToken
};
