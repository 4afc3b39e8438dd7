/** Types of the Rookery client contract (PROTOCOL.md): messages, replies and pushed events. */
/** A stored message as the server sends it (`msg` pushes, `msgs` replies, `convs` entries' `last`). */
export interface Message {
    conv: string;
    seq: number;
    from: string;
    cid?: string;
    ts: number;
    body?: Record<string, unknown>;
    recalled?: boolean;
    system?: {
        event: string;
        members: string[];
    };
    reply_to?: number;
    mentions?: string[];
    edited?: number;
    reactions?: Record<string, number>;
}
/** One entry of a `convs` reply. `mentions`, `muted_until` and `pinned` are absent on servers without them. */
export interface ConvSummary {
    conv: string;
    last_seq: number;
    read_seq: number;
    unread: number;
    last: Message | null;
    mentions?: number;
    muted_until?: number;
    pinned?: boolean;
}
export interface Welcome {
    user: string;
    device: string;
    node: string;
    heartbeat_s: number;
}
export interface Friends {
    friends: string[];
    incoming: {
        from: string;
        note?: string;
    }[];
    outgoing: {
        to: string;
        note?: string;
    }[];
    blocked?: string[];
}
export interface Group {
    conv: string;
    name: string;
    owner: string;
    count: number;
    members?: string[];
}
export interface Sent {
    cid: string;
    conv: string;
    seq: number;
    ts: number;
}
/** `receipts` reply: lists, or counts when asked with `counts: true`. */
export interface Receipts {
    conv: string;
    seq: number;
    read?: string[];
    unread?: string[];
    read_count?: number;
    unread_count?: number;
}
/** A node as `GET /v1/nodes` lists it. */
export interface NodeInfo {
    id: string;
    listen: string;
    up: boolean;
    connections: number;
}
/** The error codes of the contract, plus `timeout` and `disconnected` (client-side). */
export type ErrorCode = 'bad_request' | 'unauthorized' | 'forbidden' | 'not_found' | 'not_friends' | 'conflict' | 'too_large' | 'limit' | 'rate_limited' | 'unavailable' | 'internal' | 'timeout' | 'disconnected';
export declare class RookeryError extends Error {
    readonly code: ErrorCode | string;
    constructor(code: ErrorCode | string, message: string);
}
/** Connection states, in the order a healthy connection passes them. */
export type ConnectionState = 'idle' | 'connecting' | 'online' | 'waiting' | 'offline' | 'closed';
/** One unsent message of the outbox. */
export interface OutboxEntry {
    cid: string;
    conv: string;
    body: Record<string, unknown>;
    reply_to?: number;
    mentions?: string[];
    /** When it was queued (ms); also its order. */
    created: number;
    /** Set when the server refused it for good (e.g. `not_friends`); the entry stays until dropped. */
    failed?: string;
}
/** Every event a client emits, by name. */
export interface RookeryEvents {
    state: {
        state: ConnectionState;
        node?: string;
        retryInMs?: number;
    };
    welcome: Welcome;
    /** A new message, in seq order per conversation, each exactly once (pushed or pulled). */
    message: Message;
    /** The server accepted a message of the outbox. */
    sent: Sent & {
        body: Record<string, unknown>;
    };
    /** An outbox message the server refused for good. */
    failed: OutboxEntry & {
        code: string;
    };
    /** The outbox changed (queued, sent, failed, dropped). */
    outbox: OutboxEntry[];
    delivered: {
        conv: string;
        seq: number;
        by: string;
    };
    read: {
        conv: string;
        seq: number;
        by: string;
    };
    typing: {
        conv: string;
        user: string;
    };
    presence: {
        user: string;
        online: boolean;
    };
    friend_request: {
        from: string;
        note?: string;
    };
    friend: {
        user: string;
        state: 'added' | 'removed';
    };
    recalled: {
        conv: string;
        seq: number;
        by: string;
    };
    edited: {
        conv: string;
        seq: number;
        by: string;
        body: Record<string, unknown>;
        edited: number;
    };
    reaction: {
        conv: string;
        seq: number;
        user: string;
        emoji: string;
        on: boolean;
    };
    /** The conversation list was (re)loaded after (re)connecting. */
    convs: ConvSummary[];
    kicked: Record<string, never>;
    /** Any server frame, as received. */
    frame: Record<string, unknown>;
}
