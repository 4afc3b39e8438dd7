/** Reconnect delays: exponential from `baseMs`, capped at `maxMs`, with "equal jitter" (half fixed, half random). */
export interface BackoffOptions {
  baseMs: number;
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, maxMs: 30_000 };

/**
 * The delay before reconnect attempt `attempt` (0 = the first retry): a ceiling of `baseMs * 2^attempt`, at
 * most `maxMs`, and a delay drawn uniformly from [ceiling/2, ceiling]. `random` returns a number in [0, 1).
 */
export function backoffDelay(
  attempt: number,
  opts: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const exp = Math.min(Math.max(0, attempt), 30);
  const ceiling = Math.min(opts.maxMs, opts.baseMs * 2 ** exp);
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
