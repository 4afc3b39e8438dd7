/**
 * Per-conversation receive state, as a pure state machine (no I/O, no timers): it takes what the server
 * sent and returns effects for the client to carry out. It delivers each message once and in `seq` order,
 * drops a `seq` it already has, holds messages that arrive above a gap until the gap is pulled, and decides
 * when to pull (`sync` after the highest contiguous `seq`) and what to acknowledge (cumulatively).
 */
import type { ConvSummary, Message } from './types.js';

export type SyncEffect =
  | { kind: 'deliver'; msg: Message }
  | { kind: 'ack'; conv: string; seq: number }
  | { kind: 'pull'; conv: string; after: number };

/** The most messages held above a gap per conversation; past this they are dropped and pulled again. */
export const MAX_HELD = 1000;
/** A conversation first seen on a reconnect is pulled from at most this many messages back. */
export const NEW_CONV_BACKLOG = 50;

interface ConvSync {
  /** Every seq up to this one has been delivered (or was history when the conversation became known). */
  have: number;
  /** The highest seq the server is known to have. */
  target: number;
  /** Messages above a gap, by seq. */
  held: Map<number, Message>;
  /** A pull is in flight. */
  pulling: boolean;
}

export class SyncEngine {
  private readonly convs = new Map<string, ConvSync>();
  /** False until the first conversation list: what exists then is history, not news. */
  private listed = false;

  /** The highest contiguous seq of `conv` this client has (0 when unknown). */
  have(conv: string): number {
    return this.convs.get(conv)?.have ?? 0;
  }

  /** Whether the conversation is known (listed or seen). */
  knows(conv: string): boolean {
    return this.convs.has(conv);
  }

  private conv(conv: string, have: number): ConvSync {
    let c = this.convs.get(conv);
    if (!c) {
      c = { have, target: have, held: new Map(), pulling: false };
      this.convs.set(conv, c);
    }
    return c;
  }

  /** A pushed `msg`. */
  onMessage(msg: Message): SyncEffect[] {
    // A conversation never seen before starts at this message: what came earlier is history.
    const c = this.conv(msg.conv, Math.max(0, msg.seq - 1));
    return this.take(c, msg, true);
  }

  /** Feeds one message; `fromPush` pulls when it reveals a gap. */
  private take(c: ConvSync, msg: Message, fromPush: boolean): SyncEffect[] {
    const effects: SyncEffect[] = [];
    c.target = Math.max(c.target, msg.seq);
    if (msg.seq <= c.have || c.held.has(msg.seq)) {
      // a repeat (push again after a lost ack, or pushed and pulled): acknowledge again, deliver nothing
      effects.push({ kind: 'ack', conv: msg.conv, seq: c.have });
      return effects;
    }
    if (msg.seq === c.have + 1) {
      effects.push({ kind: 'deliver', msg });
      c.have = msg.seq;
      for (let next = c.held.get(c.have + 1); next; next = c.held.get(c.have + 1)) {
        c.held.delete(next.seq);
        effects.push({ kind: 'deliver', msg: next });
        c.have = next.seq;
      }
      effects.push({ kind: 'ack', conv: msg.conv, seq: c.have });
      return effects;
    }
    // above a gap: hold it and pull the missing ones
    if (c.held.size < MAX_HELD) c.held.set(msg.seq, msg);
    if (fromPush) effects.push(...this.pullIfNeeded(msg.conv, c));
    return effects;
  }

  /** A pull of `conv` if the server is known to have more than this client (e.g. to retry a failed pull). */
  wantPull(conv: string): SyncEffect[] {
    const c = this.convs.get(conv);
    return c ? this.pullIfNeeded(conv, c) : [];
  }

  private pullIfNeeded(conv: string, c: ConvSync): SyncEffect[] {
    if (c.pulling || c.target <= c.have) return [];
    c.pulling = true;
    return [{ kind: 'pull', conv, after: c.have }];
  }

  /** `notify`: the server has messages up to `lastSeq`. */
  onNotify(conv: string, lastSeq: number): SyncEffect[] {
    const c = this.conv(conv, this.listed ? 0 : lastSeq);
    c.target = Math.max(c.target, lastSeq);
    return this.pullIfNeeded(conv, c);
  }

  /**
   * A `convs` reply after (re)connecting. On the first one, what exists is history (nothing is pulled); later,
   * every conversation whose `last_seq` moved past what this client has is pulled.
   */
  onConvs(list: ConvSummary[]): SyncEffect[] {
    const effects: SyncEffect[] = [];
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
  onPulled(conv: string, msgs: Message[], lastSeq: number): SyncEffect[] {
    const c = this.conv(conv, 0);
    c.pulling = false;
    c.target = Math.max(c.target, lastSeq);
    const effects: SyncEffect[] = [];
    for (const m of msgs) effects.push(...this.take(c, m, false));
    // one cumulative ack is enough for a batch
    const acks = effects.filter((e) => e.kind === 'ack');
    const rest: SyncEffect[] = effects.filter((e) => e.kind !== 'ack');
    if (acks.length > 0) rest.push({ kind: 'ack', conv, seq: c.have });
    // more to pull (a page of `limit`, or messages stored meanwhile); an empty page ends it
    if (c.target > c.have && msgs.length > 0) rest.push(...this.pullIfNeeded(conv, c));
    return rest;
  }

  /** A pull failed (error, timeout, disconnect): it may be asked again later. */
  onPullFailed(conv: string): void {
    const c = this.convs.get(conv);
    if (c) c.pulling = false;
  }

  /** The connection dropped: no pull is in flight any more. */
  onDisconnect(): void {
    for (const c of this.convs.values()) c.pulling = false;
  }
}
