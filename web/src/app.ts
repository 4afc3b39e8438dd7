/**
 * Rookery's web chat client: sign in with a token, conversations with unread and mention counts, a chat
 * view with history on scroll, ticks, typing, presence, friends, groups, images. Plain DOM, no framework;
 * all talking to the server goes through the SDK (clients/js).
 */
import {
  RookeryClient,
  RookeryError,
  userOfToken,
  type ConnectionState,
  type ConvSummary,
  type Friends,
  type Group,
  type Message,
  type OutboxEntry,
} from '../../clients/js/src/index.js';

// ---------- tiny DOM helpers ----------

type Child = Node | string | null | undefined | false;
type Attrs = Record<string, string | number | boolean | EventListener | null | undefined>;

function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v as EventListener);
    else if (k === 'class') el.className = String(v);
    else if (k === 'html') el.innerHTML = String(v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}
/** Replaces an element's children, skipping empty ones. */
function fill(el: Element, ...children: Child[]): void {
  el.replaceChildren(...(children.filter((c) => c !== null && c !== undefined && c !== false) as (Node | string)[]));
}
const $ = <T extends Element = HTMLElement>(sel: string, root: ParentNode = document) => root.querySelector(sel) as T | null;

const ICON = {
  send: '<svg viewBox="0 0 24 24" fill="currentColor"><path d="M3.4 20.4 21 12 3.4 3.6 3.3 10l12.6 2-12.6 2z"/></svg>',
  image: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><rect x="3" y="3" width="18" height="18" rx="3"/><circle cx="8.5" cy="8.5" r="1.5"/><path d="m21 15-5-5L5 21"/></svg>',
  back: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round" stroke-linejoin="round"><path d="M15 18l-6-6 6-6"/></svg>',
  group: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M17 21v-2a4 4 0 0 0-4-4H5a4 4 0 0 0-4 4v2"/><circle cx="9" cy="7" r="4"/><path d="M23 21v-2a4 4 0 0 0-3-3.9M16 3.1a4 4 0 0 1 0 7.8"/></svg>',
  plus: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round"><path d="M12 5v14M5 12h14"/></svg>',
  logout: '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2" stroke-linecap="round" stroke-linejoin="round"><path d="M9 21H5a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h4M16 17l5-5-5-5M21 12H9"/></svg>',
  logo: '<svg class="logo" viewBox="0 0 64 64"><defs><linearGradient id="lg" x1="0" y1="0" x2="1" y2="1"><stop offset="0" stop-color="#0e7c86"/><stop offset="1" stop-color="#14a3a0"/></linearGradient></defs><rect width="64" height="64" rx="18" fill="url(#lg)"/><path d="M18 44c0-12 8-22 20-22 4 0 8 2 8 6 0 6-8 6-12 6l12 10" stroke="#fff" stroke-width="5" fill="none" stroke-linecap="round" stroke-linejoin="round"/><circle cx="40" cy="27" r="2.2" fill="#0e7c86"/></svg>',
};
const icon = (name: keyof typeof ICON) => h('span', { html: ICON[name], style: 'display:contents' });

const PALETTE = ['#e76f51', '#2a9d8f', '#e9a23b', '#6d5bd0', '#d1495b', '#2b7bb9', '#3c9d4e', '#c05299', '#4f6d7a', '#b7793e'];
function colorOf(name: string): string {
  let x = 0;
  for (const ch of name) x = (x * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[x % PALETTE.length];
}
function avatar(name: string, opts: { group?: boolean; online?: boolean; small?: boolean } = {}): HTMLElement {
  const initial = [...name.replace(/^g:/, '')][0] ?? '?';
  return h(
    'div',
    { class: `avatar${opts.group ? ' group' : ''}${opts.small ? ' small' : ''}`, style: `background:${colorOf(name)}` },
    initial,
    opts.online ? h('span', { class: 'dot', title: 'online' }) : null,
  );
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'short', day: 'numeric', month: 'short' });
function shortTime(ts: number): string {
  const d = new Date(ts);
  const now = new Date();
  if (d.toDateString() === now.toDateString()) return timeFmt.format(d);
  return dayFmt.format(d);
}
function dayLabel(ts: number): string {
  const d = new Date(ts);
  const today = new Date();
  const yesterday = new Date(Date.now() - 86_400_000);
  if (d.toDateString() === today.toDateString()) return 'Today';
  if (d.toDateString() === yesterday.toDateString()) return 'Yesterday';
  return dayFmt.format(d);
}

function toast(text: string, ms = 3000): void {
  const t = h('div', { class: 'toast', role: 'status' }, text);
  document.body.append(t);
  setTimeout(() => t.remove(), ms);
}

const ID_RE = /^[A-Za-z0-9_.-]{1,64}$/;

// ---------- state ----------

interface Conv {
  id: string;
  lastSeq: number;
  readSeq: number;
  unread: number;
  mentions?: number;
  last: Message | null;
  /** When the last message was sent (sorting). */
  activity: number;
  messages: Map<number, Message>;
  /** The lowest seq loaded (history loads below it); 0 = nothing loaded yet. */
  oldest: number;
  historyDone: boolean;
  loading: boolean;
  /** What the other side of a direct conversation has received and read. */
  peerDelivered: number;
  peerRead: number;
  group?: Group;
}

const state = {
  me: '',
  token: '',
  client: null as RookeryClient | null,
  conn: 'idle' as ConnectionState,
  node: '',
  convs: new Map<string, Conv>(),
  current: null as string | null,
  tab: 'chats' as 'chats' | 'friends',
  friends: { friends: [], incoming: [], outgoing: [] } as Friends,
  presence: new Map<string, boolean>(),
  typing: new Map<string, Map<string, number>>(),
  outbox: [] as OutboxEntry[],
  features: { edit: false, react: false },
  myReactions: new Map<string, Set<string>>(),
  upload: null as null | { sent: number; total: number },
};

function conv(id: string): Conv {
  let c = state.convs.get(id);
  if (!c) {
    c = {
      id,
      lastSeq: 0,
      readSeq: 0,
      unread: 0,
      last: null,
      activity: 0,
      messages: new Map(),
      oldest: 0,
      historyDone: false,
      loading: false,
      peerDelivered: 0,
      peerRead: 0,
    };
    state.convs.set(id, c);
  }
  return c;
}

const isGroup = (id: string) => id.startsWith('g:');
function peerOf(id: string): string {
  const [, a, b] = id.split(':');
  return a === state.me ? b : a;
}
function titleOf(id: string): string {
  if (!isGroup(id)) return peerOf(id);
  return state.convs.get(id)?.group?.name ?? id.slice(2);
}
function dmWith(user: string): string {
  return state.me < user ? `dm:${state.me}:${user}` : `dm:${user}:${state.me}`;
}
function previewOf(m: Message | null): string {
  if (!m) return 'No messages yet';
  if (m.recalled) return 'Message deleted';
  if (m.system) return systemText(m);
  const who = m.from === state.me ? 'You: ' : isGroup(m.conv) ? `${m.from}: ` : '';
  const body = m.body ?? {};
  if (body.kind === 'image') return `${who}📷 Photo`;
  return who + String(body.text ?? '');
}
function systemText(m: Message): string {
  const s = m.system;
  if (!s) return '';
  const list = s.members.join(', ');
  switch (s.event) {
    case 'created':
      return `${m.from} created the group with ${list}`;
    case 'members_added':
      return `${m.from} added ${list}`;
    case 'members_removed':
      return `${m.from} removed ${list}`;
    case 'member_left':
      return `${list} left`;
    default:
      return s.event;
  }
}
function mentionsMe(m: Message): boolean {
  return !!m.mentions && (m.mentions.includes(state.me) || m.mentions.includes('*'));
}

// ---------- sign in ----------

function tokenFromUrl(): string | null {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  return hash.get('token') ?? query.get('token');
}

function start(): void {
  const fromUrl = tokenFromUrl();
  if (fromUrl) {
    remember(fromUrl);
    // keep the token out of the address bar, history and screenshots
    const q = new URLSearchParams(location.search);
    q.delete('token');
    const rest = q.toString();
    history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : ''));
  }
  // this tab's sign-in first (two tabs may be two users), else the browser's last one
  const token = sessionStorage.getItem('rookery.token') ?? localStorage.getItem('rookery.token');
  if (token && userOfToken(token)) signIn(token);
  else showSignIn();
}

function remember(token: string): void {
  sessionStorage.setItem('rookery.token', token);
  localStorage.setItem('rookery.token', token);
}

function forget(): void {
  sessionStorage.removeItem('rookery.token');
  localStorage.removeItem('rookery.token');
}

function showSignIn(error = ''): void {
  const app = $('#app') as HTMLElement;
  app.className = '';
  const area = h('textarea', { placeholder: 'Paste your token here', 'aria-label': 'token', id: 'token' });
  const err = h('p', { class: 'error' }, error);
  const go = () => {
    const t = area.value.trim();
    if (!userOfToken(t)) {
      err.textContent = 'That does not look like a Rookery token.';
      return;
    }
    remember(t);
    signIn(t);
  };
  app.replaceChildren(
    h(
      'div',
      { class: 'signin' },
      h('div', { html: ICON.logo }),
      h('h1', {}, 'Rookery'),
      h('p', {}, 'Sign in with a token.'),
      area,
      h('button', { class: 'btn block', onclick: go, id: 'signin' }, 'Sign in'),
      err,
      h('p', { style: 'margin-top:14px;font-size:13px' }, 'On the server, ', h('code', {}, 'rookery token alice --link'), ' prints a link that signs you in.'),
    ),
  );
}

function signOut(): void {
  forget();
  state.client?.close();
  location.reload();
}

/** One device name per browser tab (kept across reloads of the tab), so two tabs do not replace each other. */
function deviceName(): string {
  let d = sessionStorage.getItem('rookery.device');
  if (!d) {
    d = `web-${Math.random().toString(36).slice(2, 8)}`;
    sessionStorage.setItem('rookery.device', d);
  }
  return d;
}

function signIn(token: string): void {
  state.token = token;
  state.me = userOfToken(token) ?? '';
  const params = new URLSearchParams(location.search);
  const client = new RookeryClient({ token, device: deviceName(), preferNode: params.get('node') ?? undefined });
  state.client = client;
  (window as unknown as { rookery: RookeryClient }).rookery = client;
  wire(client);
  renderShell();
  client.connect().catch((e: RookeryError) => {
    if (e.code === 'unauthorized') {
      forget();
      showSignIn('The server refused this token (expired or signed with another secret).');
    }
  });
}

// ---------- events from the SDK ----------

function wire(client: RookeryClient): void {
  client.on('state', (s) => {
    state.conn = s.state;
    state.node = s.node ?? state.node;
    renderStatus();
  });
  client.on('welcome', () => void onConnected());
  client.on('convs', (list) => onConvs(list));
  client.on('message', (m) => onMessage(m));
  client.on('outbox', (entries) => {
    state.outbox = entries;
    if (state.current) renderMessages();
  });
  client.on('failed', (e) => toast(`Not sent: ${e.code.replace(/_/g, ' ')}`));
  client.on('delivered', (d) => {
    const c = conv(d.conv);
    c.peerDelivered = Math.max(c.peerDelivered, d.seq);
    if (d.conv === state.current) renderMessages();
  });
  client.on('read', (r) => {
    const c = conv(r.conv);
    if (r.by === state.me) {
      c.readSeq = Math.max(c.readSeq, r.seq);
      c.unread = Math.max(0, c.lastSeq - c.readSeq);
      if (c.unread === 0) c.mentions = c.mentions === undefined ? undefined : 0;
      renderList();
      return;
    }
    c.peerRead = Math.max(c.peerRead, r.seq);
    c.peerDelivered = Math.max(c.peerDelivered, r.seq);
    if (r.conv === state.current) renderMessages();
  });
  client.on('typing', (t) => {
    if (t.user === state.me) return;
    let m = state.typing.get(t.conv);
    if (!m) state.typing.set(t.conv, (m = new Map()));
    m.set(t.user, Date.now() + 4000);
    renderTyping();
    setTimeout(renderTyping, 4100);
  });
  client.on('presence', (p) => {
    state.presence.set(p.user, p.online);
    renderList();
    renderHead();
  });
  client.on('friend_request', () => void loadFriends());
  client.on('friend', () => void loadFriends());
  client.on('recalled', (r) => {
    const m = state.convs.get(r.conv)?.messages.get(r.seq);
    if (m) {
      m.recalled = true;
      delete m.body;
    }
    if (r.conv === state.current) renderMessages();
    renderList();
  });
  client.on('edited', (e) => {
    const m = state.convs.get(e.conv)?.messages.get(e.seq);
    if (m) {
      m.body = e.body;
      m.edited = e.edited;
    }
    if (e.conv === state.current) renderMessages();
  });
  client.on('reaction', (r) => {
    const m = state.convs.get(r.conv)?.messages.get(r.seq);
    if (!m) return;
    const counts = { ...(m.reactions ?? {}) };
    counts[r.emoji] = Math.max(0, (counts[r.emoji] ?? 0) + (r.on ? 1 : -1));
    if (counts[r.emoji] === 0) delete counts[r.emoji];
    m.reactions = counts;
    if (r.user === state.me) toggleMine(r.conv, r.seq, r.emoji, r.on);
    if (r.conv === state.current) renderMessages();
  });
  client.on('kicked', () => {
    banner('This tab was replaced by another sign-in of the same device.');
  });
  document.addEventListener('visibilitychange', () => markRead());
  window.addEventListener('focus', () => markRead());
}

async function onConnected(): Promise<void> {
  const client = state.client as RookeryClient;
  void loadFriends();
  try {
    const [edit, react] = await Promise.all([client.supports('edit'), client.supports('react')]);
    state.features = { edit, react };
  } catch {
    // a reconnect will ask again
  }
  if (state.current) renderMessages();
}

function onConvs(list: ConvSummary[]): void {
  for (const s of list) {
    const c = conv(s.conv);
    c.lastSeq = Math.max(c.lastSeq, s.last_seq);
    c.readSeq = Math.max(c.readSeq, s.read_seq);
    c.unread = s.unread;
    c.mentions = s.mentions;
    if (s.last && (!c.last || s.last.seq >= c.last.seq)) c.last = s.last;
    c.activity = Math.max(c.activity, s.last?.ts ?? 0);
    if (isGroup(s.conv) && !c.group) void loadGroup(s.conv);
  }
  renderList();
  if (state.current) {
    const c = conv(state.current);
    if (c.oldest === 0) void loadOlder(c);
    markRead();
  }
}

function onMessage(m: Message): void {
  const c = conv(m.conv);
  const isNew = !c.messages.has(m.seq) && m.seq > c.lastSeq;
  if (c.oldest > 0 || m.conv === state.current) {
    c.messages.set(m.seq, m);
    if (c.oldest === 0) c.oldest = m.seq;
  }
  if (m.seq >= c.lastSeq) {
    c.lastSeq = m.seq;
    c.last = m;
    c.activity = Math.max(c.activity, m.ts);
  }
  if (m.from === state.me) {
    c.readSeq = Math.max(c.readSeq, m.seq);
  } else {
    if (isNew && m.seq > c.readSeq) {
      c.unread = Math.max(0, c.lastSeq - c.readSeq);
      if (mentionsMe(m)) c.mentions = (c.mentions ?? 0) + 1;
    }
    const typers = state.typing.get(m.conv);
    typers?.delete(m.from);
  }
  if (m.system && isGroup(m.conv)) void loadGroup(m.conv);
  renderList();
  if (m.conv === state.current) {
    renderMessages();
    markRead();
    renderHead();
  }
}

async function loadFriends(): Promise<void> {
  try {
    state.friends = await (state.client as RookeryClient).friends();
  } catch {
    return;
  }
  renderTabs();
  if (state.tab === 'friends') renderList();
}

async function loadGroup(id: string): Promise<void> {
  try {
    const g = await (state.client as RookeryClient).groupInfo(id, true);
    conv(id).group = g;
    renderList();
    if (state.current === id) renderHead();
  } catch {
    // shown by its id until it loads
  }
}

/** Loads the page of history below what is shown (the latest page first). */
async function loadOlder(c: Conv): Promise<void> {
  if (c.loading || c.historyDone || state.conn !== 'online') return;
  c.loading = true;
  const before = c.oldest > 0 ? c.oldest : c.lastSeq + 1;
  const list = $('.messages');
  const fromBottom = list ? list.scrollHeight - list.scrollTop : 0;
  try {
    const r = await (state.client as RookeryClient).history(c.id, { before, limit: 40 });
    for (const m of r.msgs) c.messages.set(m.seq, m);
    c.lastSeq = Math.max(c.lastSeq, r.last_seq);
    const lowest = r.msgs.length > 0 ? r.msgs[0].seq : before;
    c.oldest = c.oldest === 0 ? Math.max(1, lowest) : Math.min(c.oldest, lowest);
    if (r.msgs.length < 40 || lowest <= 1) c.historyDone = true;
    if (!isGroup(c.id)) void loadReceipts(c);
  } catch {
    // shown as soon as it loads on a later try
  } finally {
    c.loading = false;
  }
  if (state.current === c.id) {
    renderMessages();
    const el = $('.messages');
    if (el && fromBottom && c.oldest < before && before <= c.lastSeq) el.scrollTop = el.scrollHeight - fromBottom;
  }
}

/** For a direct conversation: whether the other side has read my last message. */
async function loadReceipts(c: Conv): Promise<void> {
  const mine = [...c.messages.values()].filter((m) => m.from === state.me && !m.system).pop();
  if (!mine) return;
  try {
    const r = await (state.client as RookeryClient).receipts(c.id, mine.seq);
    if (r.read && r.read.length > 0) {
      c.peerRead = Math.max(c.peerRead, mine.seq);
      c.peerDelivered = Math.max(c.peerDelivered, mine.seq);
      if (state.current === c.id) renderMessages();
    }
  } catch {
    // ticks stay as they are
  }
}

function markRead(): void {
  if (!state.current || document.visibilityState !== 'visible') return;
  const c = conv(state.current);
  if (c.lastSeq > c.readSeq || c.unread > 0) {
    c.readSeq = c.lastSeq;
    c.unread = 0;
    if (c.mentions !== undefined) c.mentions = 0;
    if (c.lastSeq > 0) state.client?.read(c.id, c.lastSeq);
    renderList();
  }
}

// ---------- actions ----------

function openConv(id: string | null): void {
  state.current = id;
  const shell = $('.shell');
  shell?.classList.toggle('in-chat', !!id);
  renderMain();
  renderList();
  if (!id) return;
  const c = conv(id);
  if (c.oldest === 0) void loadOlder(c);
  if (isGroup(id) && !c.group) void loadGroup(id);
  markRead();
  if (matchMedia('(min-width: 761px)').matches) ($('#composer') as HTMLTextAreaElement | null)?.focus();
}

let lastTypingSent = 0;
function onComposerInput(area: HTMLTextAreaElement): void {
  area.style.height = 'auto';
  area.style.height = `${Math.min(140, area.scrollHeight + 2)}px`;
  const now = Date.now();
  if (state.current && area.value.trim() && now - lastTypingSent > 2500) {
    lastTypingSent = now;
    state.client?.typing(state.current);
  }
}

function sendText(): void {
  const area = $('#composer') as HTMLTextAreaElement | null;
  if (!area || !state.current) return;
  const text = area.value.trim();
  if (!text) return;
  area.value = '';
  onComposerInput(area);
  lastTypingSent = 0;
  const mentions = [...text.matchAll(/@([A-Za-z0-9_.-]{1,64})/g)].map((m) => m[1]);
  const members = state.convs.get(state.current)?.group?.members;
  const valid = members ? mentions.filter((u) => members.includes(u)) : [];
  state.client?.queue(state.current, { text }, valid.length > 0 ? { mentions: [...new Set(valid)] } : {});
  scrollToBottom(true);
}

async function sendImage(file: File): Promise<void> {
  const client = state.client as RookeryClient;
  const target = state.current;
  if (!target) return;
  if (!file.type.startsWith('image/')) {
    toast('Only images can be sent here.');
    return;
  }
  let w = 0;
  let hgt = 0;
  try {
    const bmp = await createImageBitmap(file);
    w = bmp.width;
    hgt = bmp.height;
    bmp.close();
  } catch {
    toast('That image cannot be read.');
    return;
  }
  state.upload = { sent: 0, total: file.size };
  renderUpload();
  try {
    const media = await client.upload(file, {
      mime: file.type,
      name: file.name || 'image',
      onProgress: (sent, total) => {
        state.upload = { sent, total };
        renderUpload();
      },
    });
    client.queue(target, { kind: 'image', media, w, h: hgt });
  } catch (e) {
    toast(`Upload failed: ${(e as Error).message}`);
  } finally {
    state.upload = null;
    renderUpload();
  }
}

function toggleMine(convId: string, seq: number, emoji: string, on: boolean): void {
  const key = `${convId}#${seq}`;
  let set = state.myReactions.get(key);
  if (!set) state.myReactions.set(key, (set = new Set()));
  if (on) set.add(emoji);
  else set.delete(emoji);
}

async function react(m: Message, emoji: string): Promise<void> {
  const mine = state.myReactions.get(`${m.conv}#${m.seq}`)?.has(emoji) ?? false;
  try {
    await state.client?.react(m.conv, m.seq, emoji, !mine);
    toggleMine(m.conv, m.seq, emoji, !mine);
    const counts = { ...(m.reactions ?? {}) };
    counts[emoji] = Math.max(0, (counts[emoji] ?? 0) + (mine ? -1 : 1));
    if (counts[emoji] === 0) delete counts[emoji];
    m.reactions = counts;
    renderMessages();
  } catch (e) {
    toast((e as Error).message);
  }
}

async function editMessage(m: Message): Promise<void> {
  const text = prompt('Edit message', String(m.body?.text ?? ''));
  if (text === null || !text.trim()) return;
  try {
    await state.client?.edit(m.conv, m.seq, { ...(m.body ?? {}), text: text.trim() });
    m.body = { ...(m.body ?? {}), text: text.trim() };
    m.edited = Date.now();
    renderMessages();
  } catch (e) {
    toast((e as RookeryError).code === 'forbidden' ? 'This message can no longer be edited.' : (e as Error).message);
  }
}

async function recall(m: Message): Promise<void> {
  try {
    await state.client?.recall(m.conv, m.seq);
    m.recalled = true;
    delete m.body;
    renderMessages();
    renderList();
  } catch (e) {
    toast((e as RookeryError).code === 'forbidden' ? 'Too late to delete this message.' : (e as Error).message);
  }
}

async function showReadBy(m: Message): Promise<void> {
  try {
    const r = await (state.client as RookeryClient).receipts(m.conv, m.seq, true);
    const read = r.read_count ?? r.read?.length ?? 0;
    const unread = r.unread_count ?? r.unread?.length ?? 0;
    dialog('Message info', [
      h('p', { id: 'read-counts' }, `Read by ${read} of ${read + unread}`),
      h('p', { class: 'note', style: 'color:var(--muted)' }, `Sent ${new Date(m.ts).toLocaleString()}`),
    ]);
  } catch (e) {
    toast((e as Error).message);
  }
}

// ---------- rendering ----------

function banner(text: string): void {
  const main = $('.main');
  if (!main || $('.banner')) return;
  main.prepend(h('div', { class: 'banner' }, text, ' ', h('button', { class: 'btn small ghost', onclick: () => location.reload() }, 'Reconnect')));
}

function renderShell(): void {
  const app = $('#app') as HTMLElement;
  app.className = '';
  const sidebar = h(
    'aside',
    { class: 'sidebar' },
    h(
      'div',
      { class: 'me' },
      avatar(state.me),
      h('div', { class: 'who' }, h('div', { class: 'name', id: 'me' }, state.me), h('div', { class: 'status', id: 'status' }, 'Connecting…')),
      h('button', { class: 'icon-btn', title: 'New group', 'aria-label': 'New group', id: 'new-group', onclick: () => newGroupDialog() }, icon('group')),
      h('button', { class: 'icon-btn', title: 'Add a friend', 'aria-label': 'Add a friend', onclick: () => switchTab('friends') }, icon('plus')),
      h('button', { class: 'icon-btn', title: 'Sign out', 'aria-label': 'Sign out', onclick: signOut }, icon('logout')),
    ),
    h('div', { class: 'tabs', id: 'tabs' }),
    h('div', { class: 'list', id: 'list' }),
  );
  const main = h('main', { class: 'main', id: 'main' });
  app.replaceChildren(h('div', { class: 'shell' }, sidebar, main));
  renderStatus();
  renderTabs();
  renderList();
  renderMain();
  window.addEventListener('hashchange', () => {
    const t = tokenFromUrl();
    if (t && t !== state.token) {
      remember(t);
      location.reload();
    }
  });
}

function renderStatus(): void {
  const el = $('#status');
  if (!el) return;
  el.dataset.state = state.conn;
  const text: Record<ConnectionState, string> = {
    idle: 'Starting…',
    connecting: 'Connecting…',
    online: `Online${state.node ? ` · ${state.node}` : ''}`,
    waiting: 'Reconnecting…',
    offline: 'Offline: messages wait here',
    closed: 'Disconnected',
  };
  el.textContent = text[state.conn];
}

function switchTab(tab: 'chats' | 'friends'): void {
  state.tab = tab;
  renderTabs();
  renderList();
  if (tab === 'friends') setTimeout(() => ($('#friend-user') as HTMLInputElement | null)?.focus(), 0);
}

function renderTabs(): void {
  const el = $('#tabs');
  if (!el) return;
  const incoming = state.friends.incoming.length;
  el.replaceChildren(
    h('button', { class: `tab${state.tab === 'chats' ? ' active' : ''}`, onclick: () => switchTab('chats'), id: 'tab-chats' }, 'Chats'),
    h(
      'button',
      { class: `tab${state.tab === 'friends' ? ' active' : ''}`, onclick: () => switchTab('friends'), id: 'tab-friends' },
      'Friends',
      incoming > 0 ? h('span', { class: 'badge count' }, String(incoming)) : null,
    ),
  );
}

function typingIn(id: string): string[] {
  const m = state.typing.get(id);
  if (!m) return [];
  const now = Date.now();
  return [...m.entries()].filter(([, until]) => until > now).map(([u]) => u);
}

function renderList(): void {
  const el = $('#list');
  if (!el) return;
  const unread = [...state.convs.values()].reduce((n, c) => n + c.unread, 0);
  document.title = unread > 0 ? `(${unread}) Rookery` : 'Rookery';
  if (state.tab === 'friends') {
    renderFriends(el);
    return;
  }
  const convs = [...state.convs.values()]
    .filter((c) => c.lastSeq > 0 || c.id === state.current || isGroup(c.id))
    .sort((a, b) => b.activity - a.activity || (a.id < b.id ? -1 : 1));
  if (convs.length === 0) {
    el.replaceChildren(
      h('div', { class: 'empty' }, 'No conversations yet.', h('br'), h('button', { class: 'btn small ghost', onclick: () => switchTab('friends') }, 'Find a friend to talk to')),
    );
    return;
  }
  el.replaceChildren(
    ...convs.map((c) => {
      const typers = typingIn(c.id);
      const online = !isGroup(c.id) && state.presence.get(peerOf(c.id)) === true;
      return h(
        'div',
        { class: `conv-item${c.id === state.current ? ' active' : ''}`, 'data-conv': c.id, onclick: () => openConv(c.id), role: 'button', tabindex: 0 },
        avatar(isGroup(c.id) ? titleOf(c.id) : peerOf(c.id), { group: isGroup(c.id), online }),
        h(
          'div',
          { class: 'body' },
          h('div', { class: 'top' }, h('span', { class: 'title' }, titleOf(c.id)), c.activity ? h('span', { class: 'time' }, shortTime(c.activity)) : null),
          h(
            'div',
            { class: 'bottom' },
            typers.length > 0
              ? h('span', { class: 'preview typing' }, isGroup(c.id) ? `${typers[0]} is typing…` : 'typing…')
              : h('span', { class: 'preview' }, previewOf(c.last)),
            c.mentions ? h('span', { class: 'badge mention', title: 'mentions', 'data-mentions': c.mentions }, `@${c.mentions}`) : null,
            c.unread > 0 ? h('span', { class: 'badge unread', 'data-unread': c.unread }, String(c.unread)) : null,
          ),
        ),
      );
    }),
  );
}

function renderFriends(el: HTMLElement): void {
  const f = state.friends;
  const client = state.client as RookeryClient;
  const user = h('input', { class: 'input', placeholder: 'User name', id: 'friend-user', autocomplete: 'off' }) as HTMLInputElement;
  const note = h('input', { class: 'input', placeholder: 'Say hi (optional)', id: 'friend-note' }) as HTMLInputElement;
  const add = async () => {
    const u = user.value.trim();
    if (!ID_RE.test(u) || u === state.me) {
      toast('Enter a valid user name.');
      return;
    }
    try {
      await client.friendRequest(u, note.value.trim() || undefined);
      toast(`Request sent to ${u}`);
      user.value = '';
      note.value = '';
      await loadFriends();
    } catch (e) {
      toast((e as Error).message);
    }
  };
  const act = (fn: () => Promise<unknown>) => async () => {
    try {
      await fn();
    } catch (e) {
      toast((e as Error).message);
    }
    await loadFriends();
  };
  fill(
    el,
    h('div', { class: 'section-title' }, 'Add a friend'),
    h('div', { class: 'form' }, user, note, h('button', { class: 'btn small', id: 'friend-send', onclick: add }, 'Send request')),
    f.incoming.length > 0 ? h('div', { class: 'section-title' }, 'Requests') : null,
    ...f.incoming.map((r) =>
      h(
        'div',
        { class: 'row incoming', 'data-user': r.from },
        avatar(r.from, { small: true }),
        h('div', { class: 'grow' }, h('div', {}, r.from), r.note ? h('div', { class: 'note' }, r.note) : null),
        h('button', { class: 'btn small accept', onclick: act(() => client.friendAccept(r.from)) }, 'Accept'),
        h('button', { class: 'btn small gray decline', onclick: act(() => client.friendDecline(r.from)) }, 'Decline'),
      ),
    ),
    f.outgoing.length > 0 ? h('div', { class: 'section-title' }, 'Waiting for an answer') : null,
    ...f.outgoing.map((r) =>
      h(
        'div',
        { class: 'row outgoing' },
        avatar(r.to, { small: true }),
        h('div', { class: 'grow' }, r.to, r.note ? h('div', { class: 'note' }, r.note) : null),
        h('button', { class: 'btn small gray', onclick: act(() => client.friendRemove(r.to)) }, 'Withdraw'),
      ),
    ),
    h('div', { class: 'section-title' }, `Friends (${f.friends.length})`),
    f.friends.length === 0 ? h('div', { class: 'empty' }, 'No friends yet. Send a request above.') : null,
    ...f.friends.map((u) =>
      h(
        'div',
        { class: 'row friend', 'data-user': u },
        avatar(u, { small: true, online: state.presence.get(u) === true }),
        h('div', { class: 'grow' }, u, h('div', { class: 'note' }, state.presence.get(u) === true ? 'online' : state.presence.get(u) === false ? 'offline' : '')),
        h(
          'button',
          {
            class: 'btn small message',
            onclick: () => {
              state.tab = 'chats';
              renderTabs();
              openConv(dmWith(u));
            },
          },
          'Message',
        ),
      ),
    ),
  );
}

function renderMain(): void {
  const main = $('#main');
  if (!main) return;
  if (!state.current) {
    main.replaceChildren(
      h('div', { class: 'welcome' }, h('div', { html: ICON.logo }), h('h2', {}, `Hello, ${state.me}`), h('p', {}, 'Pick a conversation, or start one from Friends.')),
    );
    return;
  }
  const id = state.current;
  const area = h('textarea', { id: 'composer', rows: 1, placeholder: 'Write a message…', 'aria-label': 'message' }) as HTMLTextAreaElement;
  area.addEventListener('input', () => onComposerInput(area));
  area.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendText();
    }
  });
  const file = h('input', { type: 'file', accept: 'image/*', hidden: true, id: 'file' }) as HTMLInputElement;
  file.addEventListener('change', () => {
    const f = file.files?.[0];
    file.value = '';
    if (f) void sendImage(f);
  });
  // a pasted or dropped image is sent like a picked one
  area.addEventListener('paste', (e) => {
    const f = [...(e.clipboardData?.files ?? [])].find((x) => x.type.startsWith('image/'));
    if (f) {
      e.preventDefault();
      void sendImage(f);
    }
  });
  main.ondragover = (e) => e.preventDefault();
  main.ondrop = (e) => {
    e.preventDefault();
    const f = [...(e.dataTransfer?.files ?? [])].find((x) => x.type.startsWith('image/'));
    if (f) void sendImage(f);
  };
  const list = h('div', { class: 'messages', id: 'messages' });
  list.addEventListener('scroll', () => {
    if (list.scrollTop < 80) void loadOlder(conv(id));
  });
  main.replaceChildren(
    h('header', { class: 'chat-head', id: 'chat-head' }),
    list,
    h('div', { class: 'upload-bar', id: 'upload-bar', style: 'width:0' }),
    h(
      'div',
      { class: 'composer' },
      file,
      h('button', { class: 'icon-btn', title: 'Send a photo', 'aria-label': 'Send a photo', onclick: () => file.click() }, icon('image')),
      area,
      h('button', { class: 'send', id: 'send', title: 'Send', 'aria-label': 'Send', onclick: () => sendText() }, icon('send')),
    ),
  );
  renderHead();
  renderMessages();
  scrollToBottom(true);
}

function renderHead(): void {
  const el = $('#chat-head');
  if (!el || !state.current) return;
  const id = state.current;
  const c = conv(id);
  const typers = typingIn(id);
  let sub: HTMLElement;
  if (typers.length > 0) sub = h('div', { class: 'sub typing', id: 'typing' }, isGroup(id) ? `${typers.join(', ')} typing…` : 'typing…');
  else if (isGroup(id)) sub = h('div', { class: 'sub' }, c.group ? `${c.group.count} members` : '');
  else {
    const p = state.presence.get(peerOf(id));
    sub = h('div', { class: 'sub', id: 'presence' }, p === true ? 'online' : p === false ? 'offline' : '');
  }
  fill(
    el,
    h('button', { class: 'icon-btn back', 'aria-label': 'Back', onclick: () => openConv(null) }, icon('back')),
    avatar(isGroup(id) ? titleOf(id) : peerOf(id), { group: isGroup(id), online: !isGroup(id) && state.presence.get(peerOf(id)) === true }),
    h('div', { class: 'info' }, h('div', { class: 'title' }, titleOf(id)), sub),
    isGroup(id) ? h('button', { class: 'btn small gray', id: 'members', onclick: () => membersDialog(id) }, 'Members') : null,
  );
}

function renderTyping(): void {
  renderHead();
  renderList();
  const list = $('#messages');
  if (!list || !state.current) return;
  const typers = typingIn(state.current);
  const bubble = $('.typing-bubble', list);
  if (typers.length > 0 && !bubble) {
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.append(h('div', { class: 'typing-bubble', title: `${typers.join(', ')} typing` }, h('i'), h('i'), h('i')));
    if (atBottom) list.scrollTop = list.scrollHeight;
  } else if (typers.length === 0) bubble?.remove();
}

function renderUpload(): void {
  const bar = $('#upload-bar');
  if (!bar) return;
  bar.style.width = state.upload ? `${Math.round((100 * state.upload.sent) / Math.max(1, state.upload.total))}%` : '0';
}

function scrollToBottom(force = false): void {
  const el = $('#messages');
  if (!el) return;
  if (force || el.scrollHeight - el.scrollTop - el.clientHeight < 160) el.scrollTop = el.scrollHeight;
}

type TickState = 'pending' | 'sent' | 'delivered' | 'read' | 'failed';
const TICKS: Record<TickState, string> = { pending: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };

function renderMessages(): void {
  const list = $('#messages');
  if (!list || !state.current) return;
  const c = conv(state.current);
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 160;
  const msgs = [...c.messages.values()].sort((a, b) => a.seq - b.seq);
  const nodes: Node[] = [];
  if (c.historyDone) nodes.push(h('div', { class: 'history-end' }, msgs.length ? 'This is the beginning of the conversation' : 'Say hello 👋'));
  else if (c.loading || c.oldest === 0) nodes.push(h('div', { class: 'loading-older' }, 'Loading…'));
  let prev: Message | null = null;
  let lastDay = '';
  for (const m of msgs) {
    const day = new Date(m.ts).toDateString();
    if (day !== lastDay) {
      nodes.push(h('div', { class: 'day' }, dayLabel(m.ts)));
      lastDay = day;
      prev = null;
    }
    if (m.system) {
      nodes.push(h('div', { class: 'system', 'data-seq': m.seq }, systemText(m)));
      prev = null;
      continue;
    }
    const cont = !!prev && prev.from === m.from && m.ts - prev.ts < 5 * 60_000;
    nodes.push(messageNode(c, m, cont));
    prev = m;
  }
  for (const e of state.outbox.filter((x) => x.conv === c.id)) {
    const pending: Message = { conv: e.conv, seq: 0, from: state.me, cid: e.cid, ts: e.created, body: e.body };
    nodes.push(messageNode(c, pending, prev?.from === state.me, e.failed ? 'failed' : 'pending'));
    prev = pending;
  }
  const typers = typingIn(c.id);
  if (typers.length > 0) nodes.push(h('div', { class: 'typing-bubble' }, h('i'), h('i'), h('i')));
  list.replaceChildren(...nodes);
  if (atBottom) list.scrollTop = list.scrollHeight;
  // a short first page: fill the screen
  if (!c.historyDone && !c.loading && c.oldest > 0 && list.scrollHeight <= list.clientHeight) void loadOlder(c);
}

function messageNode(c: Conv, m: Message, cont: boolean, pendingState?: TickState): HTMLElement {
  const mine = m.from === state.me;
  const body = m.body ?? {};
  let content: Node;
  if (m.recalled) content = document.createTextNode('This message was deleted');
  else if (body.kind === 'image' && typeof body.media === 'string') {
    const w = Number(body.w) || 1;
    const hh = Number(body.h) || 1;
    const scale = Math.min(1, 260 / w, 300 / hh);
    const img = h('img', {
      class: 'img',
      src: state.client?.mediaUrl(body.media, true) ?? '',
      alt: 'photo',
      width: Math.round(w * scale),
      height: Math.round(hh * scale),
      loading: 'lazy',
    });
    img.addEventListener('click', () => lightbox(state.client?.mediaUrl(body.media as string) ?? ''));
    content = img;
  } else content = document.createTextNode(String(body.text ?? JSON.stringify(body)));
  let tick: TickState | null = null;
  if (mine) {
    if (pendingState) tick = pendingState;
    else if (!isGroup(c.id) && c.peerRead >= m.seq) tick = 'read';
    else if (!isGroup(c.id) && c.peerDelivered >= m.seq) tick = 'delivered';
    else tick = 'sent';
  }
  const meta = h(
    'span',
    { class: 'meta' },
    m.edited ? h('span', { class: 'edited' }, 'edited') : null,
    h('span', { class: 'time' }, timeFmt.format(new Date(m.ts))),
    tick ? h('span', { class: 'ticks', 'data-state': tick, title: tick }, TICKS[tick]) : null,
  );
  const actions: HTMLElement[] = [];
  if (!pendingState && !m.recalled) {
    if (state.features.react) for (const e of ['👍', '❤️', '😂']) actions.push(h('button', { onclick: () => void react(m, e), title: `React ${e}` }, e));
    if (mine && state.features.edit && typeof body.text === 'string') actions.push(h('button', { onclick: () => void editMessage(m) }, 'Edit'));
    if (isGroup(c.id) && mine) actions.push(h('button', { class: 'info-btn', onclick: () => void showReadBy(m) }, 'Info'));
    if (mine) actions.push(h('button', { onclick: () => void recall(m) }, 'Delete'));
  }
  if (pendingState === 'failed' && m.cid) {
    actions.push(h('button', { onclick: () => state.client?.retry(m.cid as string) }, 'Retry'));
    actions.push(h('button', { onclick: () => state.client?.discard(m.cid as string) }, 'Discard'));
  }
  const reactions = m.reactions && Object.keys(m.reactions).length > 0
    ? h(
        'div',
        { class: 'reactions' },
        ...Object.entries(m.reactions).map(([e, n]) =>
          h('button', { class: state.myReactions.get(`${m.conv}#${m.seq}`)?.has(e) ? 'me' : '', onclick: () => void react(m, e) }, `${e} ${n}`),
        ),
      )
    : null;
  const el = h(
    'div',
    {
      class: `msg${mine ? ' mine' : ''}${cont ? ' cont' : ''}${m.recalled ? ' recalled' : ''}${pendingState ? ' pending' : ''}`,
      'data-seq': m.seq || null,
      'data-cid': m.cid ?? null,
    },
    isGroup(c.id) && !mine && !cont ? h('div', { class: 'sender', style: `color:${colorOf(m.from)}` }, m.from) : null,
    actions.length > 0 ? h('div', { class: 'actions' }, ...actions) : null,
    h('div', { class: 'bubble' }, content, meta),
    reactions,
  );
  // touch screens: a tap shows the actions
  el.addEventListener('click', (ev) => {
    if ((ev.target as HTMLElement).tagName === 'IMG') return;
    document.querySelectorAll('.msg.show-actions').forEach((x) => x !== el && x.classList.remove('show-actions'));
    el.classList.toggle('show-actions');
  });
  return el;
}

// ---------- dialogs ----------

function dialog(title: string, content: Node[], buttons: HTMLElement[] = []): { close: () => void; root: HTMLElement } {
  const overlay = h('div', { class: 'overlay' });
  const close = () => overlay.remove();
  overlay.addEventListener('click', (e) => e.target === overlay && close());
  overlay.append(
    h(
      'div',
      { class: 'dialog', role: 'dialog', 'aria-label': title },
      h('h3', {}, title),
      ...content,
      h('div', { class: 'buttons' }, ...buttons, h('button', { class: 'btn gray', onclick: close }, buttons.length ? 'Cancel' : 'Close')),
    ),
  );
  document.body.append(overlay);
  return { close, root: overlay };
}

function lightbox(src: string): void {
  const overlay = h('div', { class: 'overlay lightbox', onclick: () => overlay.remove() }, h('img', { src, alt: 'photo' }));
  document.body.append(overlay);
}

function newGroupDialog(): void {
  const client = state.client as RookeryClient;
  const name = h('input', { class: 'input', id: 'group-name', placeholder: 'Weekend trip' }) as HTMLInputElement;
  const gid = h('input', { class: 'input', id: 'group-id', placeholder: 'weekend-trip' }) as HTMLInputElement;
  name.addEventListener('input', () => {
    if (!gid.dataset.touched) gid.value = name.value.trim().toLowerCase().replace(/[^a-z0-9_.-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 64);
  });
  gid.addEventListener('input', () => (gid.dataset.touched = '1'));
  const boxes = state.friends.friends.map((u) => {
    const box = h('input', { type: 'checkbox', value: u }) as HTMLInputElement;
    return { u, box, row: h('label', { class: 'check' }, box, avatar(u, { small: true }), u) };
  });
  const others = h('input', { class: 'input', id: 'group-members', placeholder: 'other members, comma separated' }) as HTMLInputElement;
  const err = h('div', { class: 'error' });
  const create = h('button', { class: 'btn', id: 'group-create' }, 'Create');
  const d = dialog(
    'New group',
    [
      h('label', {}, 'Name'),
      name,
      h('label', {}, 'Group id'),
      gid,
      h('label', {}, 'Members'),
      ...boxes.map((b) => b.row),
      others,
      err,
    ],
    [create],
  );
  create.addEventListener('click', async () => {
    const id = gid.value.trim();
    const members = [
      ...boxes.filter((b) => b.box.checked).map((b) => b.u),
      ...others.value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean),
    ];
    if (!name.value.trim()) return void (err.textContent = 'Give the group a name.');
    if (!ID_RE.test(id)) return void (err.textContent = 'The id may use letters, digits, _ . and - (up to 64).');
    const bad = members.find((m) => !ID_RE.test(m));
    if (bad) return void (err.textContent = `"${bad}" is not a valid user name.`);
    try {
      const g = await client.groupCreate(`g:${id}`, name.value.trim(), [...new Set(members)].filter((m) => m !== state.me));
      const c = conv(g.conv);
      c.group = g;
      c.activity = Date.now();
      d.close();
      state.tab = 'chats';
      renderTabs();
      openConv(g.conv);
      void loadGroup(g.conv);
    } catch (e) {
      err.textContent = (e as RookeryError).code === 'conflict' ? 'That group id is taken.' : (e as Error).message;
    }
  });
  setTimeout(() => name.focus(), 0);
}

async function membersDialog(id: string): Promise<void> {
  const client = state.client as RookeryClient;
  let g: Group;
  try {
    g = await client.groupInfo(id, true);
    conv(id).group = g;
  } catch (e) {
    toast((e as Error).message);
    return;
  }
  const members = g.members ?? [];
  const list = members.map((u) =>
    h(
      'div',
      { class: 'row member', 'data-user': u },
      avatar(u, { small: true, online: state.presence.get(u) === true }),
      h('div', { class: 'grow' }, u, u === g.owner ? h('div', { class: 'note' }, 'owner') : null),
    ),
  );
  const content: Node[] = [h('p', { class: 'note', style: 'color:var(--muted);margin-top:-8px' }, `${g.count} members`), ...list];
  const buttons: HTMLElement[] = [];
  const err = h('div', { class: 'error' });
  if (g.owner === state.me) {
    const add = h('input', { class: 'input', id: 'add-member', placeholder: 'Add members (comma separated)' }) as HTMLInputElement;
    content.push(h('label', {}, 'Add members'), add, err);
    const go = h('button', { class: 'btn', id: 'add-member-go' }, 'Add');
    go.addEventListener('click', async () => {
      const users = add.value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
      if (users.length === 0 || users.some((u) => !ID_RE.test(u))) return void (err.textContent = 'Enter valid user names.');
      try {
        conv(id).group = await client.groupAdd(id, users);
        d.close();
        void membersDialog(id);
        renderHead();
      } catch (e) {
        err.textContent = (e as Error).message;
      }
    });
    buttons.push(go);
  } else {
    const leave = h('button', { class: 'btn danger' }, 'Leave group');
    leave.addEventListener('click', async () => {
      try {
        await client.groupLeave(id);
        state.convs.delete(id);
        d.close();
        openConv(null);
      } catch (e) {
        err.textContent = (e as Error).message;
      }
    });
    content.push(err);
    buttons.push(leave);
  }
  const d = dialog(g.name, content, buttons);
}

// Escape closes the top dialog, else the open conversation
document.addEventListener('keydown', (e) => {
  if (e.key !== 'Escape') return;
  const overlays = document.querySelectorAll('.overlay');
  if (overlays.length > 0) overlays[overlays.length - 1].remove();
  else if (state.current) openConv(null);
});

// typing indicators expire without an event
setInterval(() => {
  for (const [id, m] of state.typing) {
    for (const [u, until] of m) if (until < Date.now()) m.delete(u);
    if (m.size === 0) state.typing.delete(id);
  }
}, 1000);

start();
