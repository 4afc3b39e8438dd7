/**
 * Per-conversation receive state, as a pure state machine (no I/O, no timers): it takes what the server
 * sent and returns effects for the client to carry out. It delivers each message once and in `seq` order,
 * drops a `seq` it already has, holds messages that arrive above a gap until the gap is pulled, and decides
 * when to pull (`sync` after the highest contiguous `seq`) and what to acknowledge (cumulatively).
 */
import type { ConvSummary, Message } from './types.js';
export type SyncEffect = {
    kind: 'deliver';
    msg: Message;
} | {
    kind: 'ack';
    conv: string;
    seq: number;
} | {
    kind: 'pull';
    conv: string;
    after: number;
};
/** The most messages held above a gap per conversation; past this they are dropped and pulled again. */
export declare const MAX_HELD = 1000;
/** A conversation first seen on a reconnect is pulled from at most this many messages back. */
export declare const NEW_CONV_BACKLOG = 50;
export declare class SyncEngine {
    private readonly convs;
    /** False until the first conversation list: what exists then is history, not news. */
    private listed;
    /** The highest contiguous seq of `conv` this client has (0 when unknown). */
    have(conv: string): number;
    /** Whether the conversation is known (listed or seen). */
    knows(conv: string): boolean;
    private conv;
    /** A pushed `msg`. */
    onMessage(msg: Message): SyncEffect[];
    /** Feeds one message; `fromPush` pulls when it reveals a gap. */
    private take;
    /** A pull of `conv` if the server is known to have more than this client (e.g. to retry a failed pull). */
    wantPull(conv: string): SyncEffect[];
    private pullIfNeeded;
    /** `notify`: the server has messages up to `lastSeq`. */
    onNotify(conv: string, lastSeq: number): SyncEffect[];
    /**
     * A `convs` reply after (re)connecting. On the first one, what exists is history (nothing is pulled); later,
     * every conversation whose `last_seq` moved past what this client has is pulled.
     */
    onConvs(list: ConvSummary[]): SyncEffect[];
    /** A `msgs` reply to a pull made for `after`. Pulls again while the server has more. */
    onPulled(conv: string, msgs: Message[], lastSeq: number): SyncEffect[];
    /** A pull failed (error, timeout, disconnect): it may be asked again later. */
    onPullFailed(conv: string): void;
    /** The connection dropped: no pull is in flight any more. */
    onDisconnect(): void;
}
