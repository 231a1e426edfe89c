import { describe, expect, it } from 'vitest';
import { backoffDelay, DEFAULT_BACKOFF } from '../src/backoff.js';
import { channelError, isValidChannel, normalizeChannels } from '../src/channels.js';
import { jwtExpiry } from '../src/jwt.js';
import { Registry } from '../src/registry.js';
import type { SSEMessage } from '../src/types.js';

const msg = (channel: string, id: string, payload: unknown = {}): SSEMessage => ({ channel, id, event: 'message', ts: 1, payload });

describe('backoff', () => {
  const o = { initialMs: 1000, maxMs: 30000, factor: 2, jitter: 0 };
  it('grows exponentially and is capped', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 10].map((a) => backoffDelay(a, o))).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  });
  it('jitter keeps the delay within [base*(1-j), base]', () => {
    const j = { ...o, jitter: 0.5 };
    expect(backoffDelay(2, j, () => 0)).toBe(2000);
    expect(backoffDelay(2, j, () => 1)).toBe(4000);
    expect(backoffDelay(2, j, () => 0.5)).toBe(3000);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(3, j);
      expect(d).toBeGreaterThanOrEqual(4000);
      expect(d).toBeLessThanOrEqual(8000);
    }
  });
  it('spreads clients out (jitter is really random)', () => {
    const seen = new Set(Array.from({ length: 50 }, () => backoffDelay(4, { ...o, jitter: 1 })));
    expect(seen.size).toBeGreaterThan(10);
  });
  it('has sane defaults and clamps odd input', () => {
    expect(DEFAULT_BACKOFF.initialMs).toBeGreaterThan(0);
    expect(backoffDelay(-3, { ...o })).toBe(1000);
    expect(backoffDelay(1, { ...o, jitter: 7 }, () => 0)).toBe(0);
  });
});

describe('channel names', () => {
  it('accepts the spec examples', () => {
    for (const c of ['logs:demo:etl-1', 'workflow:demo:wf-1', 'metrics:demo', 'dashboards:main', 'alerts:a.b@c', 'logs']) {
      expect(channelError(c)).toBeNull();
    }
  });
  it('rejects malformed names without normalising them', () => {
    for (const c of ['', 'Logs:x', 'logs:', 'logs::x', 'logs:*', 'logs:**', 'logs:a b', '1x:y', 'a:b:c:d:e:f:g:h:i', 'x:' + 'a'.repeat(129)]) {
      expect(isValidChannel(c), c).toBe(false);
    }
    expect(channelError('logs:' + 'é'.repeat(126))).toMatch(/segment|256/);
  });
  it('normalizes lists into a sorted, de-duplicated key', () => {
    expect(normalizeChannels(['b', 'a', 'b'])).toEqual(['a', 'b']);
    expect(normalizeChannels('x')).toEqual(['x']);
    expect(normalizeChannels(undefined)).toEqual([]);
  });
});

describe('jwtExpiry', () => {
  it('reads exp from a JWT payload', () => {
    const payload = Buffer.from(JSON.stringify({ sub: 'a', exp: 1234 })).toString('base64url');
    expect(jwtExpiry(`h.${payload}.s`)).toBe(1234);
    expect(jwtExpiry('garbage')).toBeNull();
  });
});

describe('Registry (routing and bookkeeping)', () => {
  it('routes envelopes by channel to their handlers only', () => {
    const r = new Registry();
    const a: string[] = [];
    const b: string[] = [];
    r.add(['logs:x'], (m) => a.push(m.id));
    r.add(['metrics:x', 'logs:x'], (m) => b.push(m.id));
    r.dispatch(msg('logs:x', '1'));
    r.dispatch(msg('metrics:x', '2'));
    r.dispatch(msg('other:x', '3'));
    expect(a).toEqual(['1']);
    expect(b).toEqual(['1', '2']);
  });

  it('wanted channels are exactly the union of live subscriptions', () => {
    const r = new Registry();
    const off1 = r.add(['a', 'b'], () => {});
    const off2 = r.add(['b', 'c'], () => {});
    expect(r.channels()).toEqual(['a', 'b', 'c']);
    expect(r.count('b')).toBe(2);
    off1();
    expect(r.channels()).toEqual(['b', 'c']);
    off1(); // idempotent
    expect(r.count('b')).toBe(1);
    off2();
    expect(r.channels()).toEqual([]);
  });

  it('drops a repeated cursor (no duplicate delivery)', () => {
    const r = new Registry(3);
    const got: string[] = [];
    r.add(['a'], (m) => got.push(m.id));
    for (const id of ['1', '2', '2', '3', '1', '4', '5', '1']) r.dispatch(msg('a', id));
    // window of 3: '1' is forgotten after 3 newer ids
    expect(got).toEqual(['1', '2', '3', '4', '5', '1']);
  });

  it('a throwing handler does not stop the others', async () => {
    const r = new Registry();
    const got: string[] = [];
    r.add(['a'], () => {
      throw new Error('app bug');
    });
    r.add(['a'], (m) => got.push(m.id));
    const errors: unknown[] = [];
    const orig = globalThis.setTimeout;
    // reportError rethrows in a timer; capture it instead of failing the run
    (globalThis as { setTimeout: unknown }).setTimeout = (fn: () => void) => {
      try {
        fn();
      } catch (e) {
        errors.push(e);
      }
      return 0;
    };
    try {
      r.dispatch(msg('a', '1'));
    } finally {
      globalThis.setTimeout = orig;
    }
    expect(got).toEqual(['1']);
    expect(errors).toHaveLength(1);
  });

  it('gap and denied notices reach only the subscriptions concerned', () => {
    const r = new Registry();
    const gaps: string[][] = [];
    const denied: string[][] = [];
    r.add(['a', 'b'], () => {}, { onGap: (g) => gaps.push(g.channels), onDenied: (d) => denied.push(d.map((x) => x.channel)) });
    r.add(['c'], () => {}, { onGap: (g) => gaps.push(['c?', ...g.channels]) });
    r.dispatchGap({ channels: ['b', 'z'], at: 0 });
    r.dispatchDenied([
      { channel: 'a', reason: 'x', source: 'server' },
      { channel: 'q', reason: 'y', source: 'server' },
    ]);
    expect(gaps).toEqual([['b']]);
    expect(denied).toEqual([['a']]);
  });
});
