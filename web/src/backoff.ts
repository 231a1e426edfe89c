import type { BackoffOptions } from './types.js';

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 1000, maxMs: 30000, factor: 2, jitter: 0.5 };

/**
 * Delay before reconnect attempt number `attempt` (0-based): exponential growth capped at `maxMs`,
 * with the `jitter` share of it randomised so that many browsers do not reconnect in lockstep
 * after a gateway restart. The result lies in [base * (1 - jitter), base].
 */
export function backoffDelay(attempt: number, options: Partial<BackoffOptions> = {}, random: () => number = Math.random): number {
  const o = { ...DEFAULT_BACKOFF, ...options };
  const n = Math.max(0, Math.floor(attempt));
  const base = Math.min(o.maxMs, o.initialMs * Math.pow(Math.max(1, o.factor), n));
  const jitter = Math.min(1, Math.max(0, o.jitter));
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(base * (1 - jitter) + base * jitter * r);
}
