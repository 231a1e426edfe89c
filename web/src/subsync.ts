/**
 * Keeps the open stream's channel set equal to the wanted one through `POST /api/sse/subscriptions`:
 * one request at a time, changes made meanwhile batched into the next, failures retried with backoff.
 */
import { backoffDelay } from './backoff.js';
import type { BackoffOptions } from './types.js';

/**
 * - `idle`: in step (or nothing to sync with). - `queued`: a sync runs at the end of this tick.
 * - `sending`: a request is in flight. - `resend`: in flight, and the wanted set changed since.
 * - `backoff`: the last request failed; a timer retries.
 */
export type SyncState = 'idle' | 'queued' | 'sending' | 'resend' | 'backoff';

/** What the connection answers for one request. */
export type SyncOutcome = 'done' | 'retry' | 'abandon';

export interface SyncTarget {
  connectionId: string;
  granted: ReadonlySet<string>;
  wanted: readonly string[];
}

export interface SyncHost {
  /** The open stream to sync, or null when there is none. */
  target(): SyncTarget | null;
  /** Sends one change for `target`; `signal` aborts when the sync is reset (the stream went away). */
  send(target: SyncTarget, add: string[], remove: string[], signal: AbortSignal): Promise<SyncOutcome>;
}

export class SubscriptionSync {
  private state: SyncState = 'idle';
  private failures = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  /** Aborted by `reset()`: a request in flight for a stream that is gone has nothing left to do. */
  private abort = new AbortController();

  constructor(
    private readonly host: SyncHost,
    private readonly backoff: Partial<BackoffOptions>,
    private readonly random: () => number,
  ) {}

  get current(): SyncState {
    return this.state;
  }

  /** The wanted set (or the stream) changed: sync at the end of this tick. */
  request(): void {
    switch (this.state) {
      case 'idle':
      case 'backoff':
        this.setState('queued');
        queueMicrotask(() => {
          if (this.state === 'queued') void this.run();
        });
        break;
      case 'sending':
        this.setState('resend');
        break;
      case 'queued':
      case 'resend':
        break;
    }
  }

  /** The stream went away: drop what is pending (a new stream carries the full list). */
  reset(): void {
    this.abort.abort();
    this.abort = new AbortController();
    this.failures = 0;
    this.setState('idle');
  }

  /** The one place the state changes; leaving `backoff` cancels its timer. */
  private setState(next: SyncState): void {
    if (this.state === 'backoff' && next !== 'backoff' && this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    this.state = next;
  }

  private async run(): Promise<void> {
    const target = this.host.target();
    if (!target) return this.setState('idle');
    const wanted = new Set(target.wanted);
    const add = Array.from(wanted).filter((c) => !target.granted.has(c));
    const remove = Array.from(target.granted).filter((c) => !wanted.has(c));
    if (add.length === 0 && remove.length === 0) return this.setState('idle');

    const signal = this.abort.signal;
    this.setState('sending');
    let outcome: SyncOutcome;
    try {
      outcome = await this.host.send(target, add, remove, signal);
    } catch {
      outcome = 'retry';
    }
    if (signal.aborted) return; // reset meanwhile: its state is already `idle`
    if (outcome === 'abandon') return this.setState('idle');
    if (outcome === 'retry') {
      const delay = backoffDelay(this.failures++, this.backoff, this.random);
      this.setState('backoff');
      this.timer = setTimeout(() => {
        this.timer = null;
        if (this.state === 'backoff') void this.run();
      }, delay);
      return;
    }
    this.failures = 0;
    const again = this.state === 'resend';
    this.setState('idle');
    if (again) void this.run();
  }
}
