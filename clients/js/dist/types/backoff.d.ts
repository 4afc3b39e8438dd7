/** Reconnect delays: exponential from `baseMs`, capped at `maxMs`, with "equal jitter" (half fixed, half random). */
export interface BackoffOptions {
    baseMs: number;
    maxMs: number;
}
export declare const DEFAULT_BACKOFF: BackoffOptions;
/**
 * The delay before reconnect attempt `attempt` (0 = the first retry): a ceiling of `baseMs * 2^attempt`, at
 * most `maxMs`, and a delay drawn uniformly from [ceiling/2, ceiling]. `random` returns a number in [0, 1).
 */
export declare function backoffDelay(attempt: number, opts?: BackoffOptions, random?: () => number): number;
