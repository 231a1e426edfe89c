// @vitest-environment jsdom
import { act, cleanup, render, screen, waitFor } from '@testing-library/react';
import { StrictMode, useState } from 'react';
import { createRoot } from 'react-dom/client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SSEClient } from '../src/client.js';
import { SSEProvider, useSSE, useSSELatest, useSSESubscription, withSSE, type WithSSEProps } from '../src/react/index.js';
import type { SSEMessage } from '../src/types.js';
import { baseOptions, FakeEventSource, FakeGateway, MemoryStorage } from './fakes.js';

let gw: FakeGateway;
let client: SSEClient;

beforeEach(() => {
  FakeEventSource.reset();
  gw = new FakeGateway();
  client = new SSEClient(baseOptions(gw));
});
afterEach(() => {
  cleanup();
  client.close();
});

async function accept(id = 'conn-1'): Promise<FakeEventSource> {
  await waitFor(() => expect(FakeEventSource.instances.length).toBeGreaterThan(0));
  const es = FakeEventSource.latest();
  act(() => gw.accept(es, id));
  await waitFor(() => expect(client.getState().status).toBe('open'));
  return es;
}

function Logs() {
  const { data } = useSSESubscription<string>('logs:demo:etl-1', {
    accumulate: true,
    maxItems: 3,
    transform: (m) => (m.payload as { msg?: string }).msg,
  });
  return <ul data-testid="logs">{data.map((x, i) => <li key={i}>{x}</li>)}</ul>;
}

function Metric() {
  const { data, lastMessage } = useSSESubscription('metrics:demo');
  return (
    <div data-testid="metric">
      {data ? JSON.stringify((data as SSEMessage).payload) : 'none'}|{lastMessage?.id ?? ''}
    </div>
  );
}

function Status() {
  const { status, connectionId, role } = useSSE();
  return <div data-testid="status">{`${status}:${connectionId ?? ''}:${role}`}</div>;
}

describe('React bindings', () => {
  it('components receive their own channels over one EventSource; accumulate/maxItems/transform', async () => {
    render(
      <SSEProvider client={client}>
        <Status />
        <Logs />
        <Metric />
      </SSEProvider>,
    );
    const es = await accept();
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(es.channels).toEqual(['logs:demo:etl-1', 'metrics:demo']);
    expect(screen.getByTestId('status').textContent).toBe('open:conn-1:standalone');
    act(() => {
      for (let i = 1; i <= 5; i++) es.message('logs:demo:etl-1', `l${i}`, { msg: `line ${i}` });
      es.message('logs:demo:etl-1', 'l6', { other: true }); // transform -> undefined: skipped
      es.message('metrics:demo', 'm1', { cpu: 42 });
    });
    expect(screen.getByTestId('logs').textContent).toBe('line 3line 4line 5');
    expect(screen.getByTestId('metric').textContent).toBe('{"cpu":42}|m1');
  });

  it('is safe under StrictMode double mounting, and unmounting releases the channel', async () => {
    function App() {
      const [show, setShow] = useState(true);
      return (
        <SSEProvider client={client}>
          <button onClick={() => setShow((s) => !s)}>toggle</button>
          {show && <Metric />}
          <Logs />
        </SSEProvider>
      );
    }
    render(
      <StrictMode>
        <App />
      </StrictMode>,
    );
    await accept();
    // give any stray (un)subscribe a chance to show up
    await new Promise((r) => setTimeout(r, 30));
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(gw.callsTo('/api/sse/subscriptions')).toHaveLength(0);
    expect(client.channels()).toEqual(['logs:demo:etl-1', 'metrics:demo']);

    act(() => screen.getByText('toggle').click());
    await waitFor(() => expect(gw.callsTo('/api/sse/subscriptions')).toHaveLength(1));
    expect(gw.callsTo('/api/sse/subscriptions')[0]!.body).toMatchObject({ add: [], remove: ['metrics:demo'] });
    expect(client.channels()).toEqual(['logs:demo:etl-1']);
    // and back: added live, still one EventSource
    act(() => screen.getByText('toggle').click());
    await waitFor(() => expect(gw.callsTo('/api/sse/subscriptions')).toHaveLength(2));
    expect(gw.callsTo('/api/sse/subscriptions')[1]!.body).toMatchObject({ add: ['metrics:demo'], remove: [] });
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it('unmounting the whole tree leaves no subscription behind', async () => {
    const { unmount } = render(
      <SSEProvider client={client}>
        <Logs />
        <Metric />
      </SSEProvider>,
    );
    await accept();
    unmount();
    expect(client.channels()).toEqual([]);
    await waitFor(() => expect(client.getState().channels).toEqual([]));
  });

  it('a component mounted later is added live (no reconnect)', async () => {
    function App() {
      const [later, setLater] = useState(false);
      return (
        <SSEProvider client={client}>
          <button onClick={() => setLater(true)}>mount</button>
          <Logs />
          {later && <Metric />}
        </SSEProvider>
      );
    }
    render(<App />);
    const es = await accept();
    expect(es.channels).toEqual(['logs:demo:etl-1']);
    act(() => screen.getByText('mount').click());
    await waitFor(() => expect(client.getState().channels).toContain('metrics:demo'));
    act(() => es.message('metrics:demo', 'm9', { cpu: 1 }));
    expect(screen.getByTestId('metric').textContent).toBe('{"cpu":1}|m9');
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it('exposes gap and denied per subscription', async () => {
    gw.allow = (c) => c !== 'metrics:private';
    const gaps: string[][] = [];
    function Probe({ ch }: { ch: string }) {
      const { denied, gap } = useSSESubscription(ch, { onGap: (g) => gaps.push(g.channels) });
      return <div data-testid={ch}>{`${denied.map((d) => d.reason).join(',')}|${gap ? gap.channels.join(',') : ''}`}</div>;
    }
    render(
      <SSEProvider client={client}>
        <Probe ch="logs:demo:etl-1" />
        <Probe ch="metrics:private" />
      </SSEProvider>,
    );
    const es = await accept();
    await waitFor(() => expect(screen.getByTestId('metrics:private').textContent).toBe('not allowed|'));
    expect(screen.getByTestId('logs:demo:etl-1').textContent).toBe('|');
    act(() => es.emit('gap', { channels: ['logs:demo:etl-1'] }));
    expect(screen.getByTestId('logs:demo:etl-1').textContent).toBe('|logs:demo:etl-1');
    expect(gaps).toEqual([['logs:demo:etl-1']]);
  });

  it('withSSE(Component, config) passes the subscription as a prop', async () => {
    function Panel({ title, sse }: { title: string } & WithSSEProps) {
      const items = sse.data as number[];
      return <div data-testid="panel">{`${title}:${items.join(',')}:${sse.status}`}</div>;
    }
    const Wrapped = withSSE(Panel, {
      channels: (p: { title: string }) => `dashboards:${p.title}`,
      accumulate: true,
      maxItems: 2,
      transform: (m) => (m.payload as { v: number }).v,
    });
    expect(Wrapped.displayName).toBe('withSSE(Panel)');
    render(
      <SSEProvider client={client}>
        <Wrapped title="main" />
      </SSEProvider>,
    );
    const es = await accept();
    expect(es.channels).toEqual(['dashboards:main']);
    act(() => {
      es.message('dashboards:main', '1', { v: 1 });
      es.message('dashboards:main', '2', { v: 2 });
      es.message('dashboards:main', '3', { v: 3 });
    });
    expect(screen.getByTestId('panel').textContent).toBe('main:2,3:open');
  });

  it('micro-frontends in separate React roots, without a common provider, share one connection', async () => {
    const opts = baseOptions(gw, { shareKey: 'mfe-test' });
    const A = withSSE(({ sse }: WithSSEProps) => <i>{(sse.data as SSEMessage | undefined)?.id ?? '-'}</i>, {
      channels: 'logs:demo:etl-1',
      clientOptions: opts,
    });
    const B = withSSE(({ sse }: WithSSEProps) => <b>{(sse.data as SSEMessage | undefined)?.id ?? '-'}</b>, {
      channels: 'metrics:demo',
      clientOptions: opts,
    });
    const hostA = document.createElement('div');
    const hostB = document.createElement('div');
    document.body.append(hostA, hostB);
    const rootA = createRoot(hostA);
    const rootB = createRoot(hostB);
    act(() => {
      rootA.render(<A />);
      rootB.render(<B />);
    });
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(1));
    const es = FakeEventSource.latest();
    expect(es.channels).toEqual(['logs:demo:etl-1', 'metrics:demo']);
    act(() => gw.accept(es, 'c1'));
    act(() => {
      es.message('logs:demo:etl-1', 'x1');
      es.message('metrics:demo', 'y1');
    });
    await waitFor(() => expect(hostA.textContent).toBe('x1'));
    expect(hostB.textContent).toBe('y1');
    act(() => rootA.unmount());
    await waitFor(() => expect(gw.callsTo('/api/sse/subscriptions').length).toBe(1));
    expect(es.closed).toBe(false);
    act(() => rootB.unmount());
    // last user gone: the shared client closes
    await waitFor(() => expect(es.closed).toBe(true));
  });

  it('after a reload, an accumulating panel shows the previous page\'s items at once and continues after them', async () => {
    const storage = new MemoryStorage();
    const page1 = new EventTarget();
    const c1 = new SSEClient(baseOptions(gw, { storage, pageEvents: page1 }));
    const first = render(
      <SSEProvider client={c1}>
        <Logs />
      </SSEProvider>,
    );
    await waitFor(() => expect(FakeEventSource.instances).toHaveLength(1));
    const es = FakeEventSource.latest();
    act(() => gw.accept(es, 'conn-1', 'c-0'));
    act(() => {
      es.message('logs:demo:etl-1', 'c-1', { msg: 'one' });
      es.message('logs:demo:etl-1', 'c-2', { msg: 'two' });
    });
    expect(screen.getByTestId('logs').textContent).toBe('onetwo');
    page1.dispatchEvent(new Event('pagehide')); // the reload: the page is gone (React does not unmount)
    c1.close();
    first.unmount();

    const c2 = new SSEClient(baseOptions(gw, { storage, pageEvents: new EventTarget() }));
    try {
      render(
        <SSEProvider client={c2}>
          <Logs />
        </SSEProvider>,
      );
      expect(screen.getByTestId('logs').textContent).toBe('onetwo'); // the first render, before any connection
      await waitFor(() => expect(FakeEventSource.instances).toHaveLength(2));
      const es2 = FakeEventSource.latest();
      expect(es2.lastEventIdParam).toBe('c-2');
      act(() => gw.accept(es2, 'conn-2', 'c-2'));
      act(() => {
        es2.message('logs:demo:etl-1', 'c-2', { msg: 'two' }); // replayed again: dropped
        es2.message('logs:demo:etl-1', 'c-3', { msg: 'three' });
        es2.message('logs:demo:etl-1', 'c-4', { msg: 'four' });
      });
      expect(screen.getByTestId('logs').textContent).toBe('twothreefour'); // maxItems 3
    } finally {
      c2.close();
    }
  });

  it('useSSELatest: a current-value panel shows the snapshot first, then newer events', async () => {
    function Gauge() {
      const { value, snapshot } = useSSELatest<{ cpu: number }>('metrics:demo');
      return <div data-testid="gauge">{value ? `${value.cpu}${snapshot ? ' (snapshot)' : ''}` : 'none'}</div>;
    }
    render(
      <SSEProvider client={client}>
        <Gauge />
      </SSEProvider>,
    );
    expect(screen.getByTestId('gauge').textContent).toBe('none');
    const es = await accept();
    act(() => es.emit('message', { channel: 'metrics:demo', event: 'metric', ts: 1, payload: { cpu: 41 }, snapshot: true }));
    expect(screen.getByTestId('gauge').textContent).toBe('41 (snapshot)');
    expect(client.getLastEventId()).toBeNull();
    act(() => es.message('metrics:demo', 'm-1', { cpu: 42 }));
    expect(screen.getByTestId('gauge').textContent).toBe('42');
  });

  it('an accumulating subscription gets the snapshot as its first item', async () => {
    function Feed() {
      const { data } = useSSESubscription<string>('dashboards:main', {
        accumulate: true,
        transform: (m) => `${m.snapshot ? 's' : 'e'}${(m.payload as { v: number }).v}`,
      });
      return <div data-testid="feed">{data.join(',')}</div>;
    }
    render(
      <SSEProvider client={client}>
        <Feed />
      </SSEProvider>,
    );
    const es = await accept();
    act(() => {
      es.emit('message', { channel: 'dashboards:main', event: 'update', ts: 1, payload: { v: 1 }, snapshot: true });
      es.message('dashboards:main', 'd-2', { v: 2 });
    });
    expect(screen.getByTestId('feed').textContent).toBe('s1,e2');
  });

  it('useSSE outside a provider explains itself', () => {
    const err = console.error;
    console.error = () => {};
    try {
      expect(() => render(<Status />)).toThrow(/SSEProvider/);
    } finally {
      console.error = err;
    }
  });
});
