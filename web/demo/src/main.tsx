/**
 * The sse-gateway demo page: four independently mounted micro-frontends (each its own React root,
 * no common provider) that share ONE SSE connection through the page's shared client — and, with
 * several tabs open, one connection for the whole browser.
 */
import { useEffect, useRef, useState, type ComponentType } from 'react';
import { createRoot, type Root } from 'react-dom/client';
import { getSharedClient, type DeniedChannel, type GapInfo, type SSEClientOptions, type SSEMessage } from '../../src/index.js';
import { SSEProvider, useSSE, withSSE, type WithSSEProps } from '../../src/react/index.js';

// ---- the page's client ------------------------------------------------------------------------

interface DemoHooks {
  client: ReturnType<typeof getSharedClient>;
  received: { channel: string; id: string; event: string; payload: unknown }[];
  gaps: GapInfo[];
  denied: DeniedChannel[];
  expired: number[];
  revoked: string[];
  tokenFetches: number;
  /** Tokens the provider handed to the client (fetches that succeeded). */
  tokensReceived: number;
}

const hooks: DemoHooks = {
  client: null as unknown as DemoHooks['client'],
  received: [],
  gaps: [],
  denied: [],
  expired: [],
  revoked: [],
  tokenFetches: 0,
  tokensReceived: 0,
};

/** The token provider: the demo gateway mints a short-lived token at /demo/token. */
async function fetchToken(): Promise<string> {
  hooks.tokenFetches++;
  const res = await fetch('/demo/token', { cache: 'no-store', credentials: 'same-origin' });
  if (!res.ok) throw new Error(`GET /demo/token: ${res.status}`);
  const body = (await res.json()) as { token?: string };
  if (!body.token) throw new Error('GET /demo/token: no token');
  hooks.tokensReceived++;
  return body.token;
}

const clientOptions: SSEClientOptions = {
  getToken: () => fetchToken(),
  backoff: { initialMs: 500, maxMs: 10000 },
  log: new URLSearchParams(location.search).has('debug') ? console.log.bind(console) : undefined,
};

const client = getSharedClient(clientOptions);
hooks.client = client;
client.on('message', (m) => {
  hooks.received.push({ channel: m.channel, id: m.id, event: m.event, payload: m.payload });
  if (hooks.received.length > 10000) hooks.received.splice(0, 1000);
});
client.on('gap', (g) => hooks.gaps.push(g));
client.on('denied', (d) => hooks.denied.push(...d));
client.on('expired', (e) => hooks.expired.push(e.at));
client.on('revoked', (r) => hooks.revoked.push(r.reason));
(window as unknown as { __sseDemo: DemoHooks }).__sseDemo = hooks;

// ---- small pieces -----------------------------------------------------------------------------

const time = (ts: number) => new Date(ts).toLocaleTimeString([], { hour12: false });

function PanelFrame(props: {
  id: string;
  title: string;
  channel: string;
  sse: WithSSEProps['sse'];
  count: number;
  children: React.ReactNode;
}) {
  const { sse } = props;
  const denied = sse.denied[0];
  return (
    <section className={`panel${denied ? ' panel-denied' : ''}`} data-testid={`panel-${props.id}`} data-count={props.count}>
      <header>
        <h2>{props.title}</h2>
        <code className="channel">{props.channel}</code>
      </header>
      {denied ? (
        <p className="denied" data-testid={`denied-${props.id}`}>
          Access denied: {denied.reason}
        </p>
      ) : (
        <div className="body">{props.children}</div>
      )}
      <footer>
        <span>{props.count} events</span>
        {sse.gap && (
          <span className="gap-badge" title="events may have been missed: state re-fetched">
            gap at {time(sse.gap.at)}
          </span>
        )}
        <span>{sse.lastMessage ? `last ${time(sse.lastMessage.ts)}` : 'waiting…'}</span>
      </footer>
    </section>
  );
}

/** Messages received by a panel (its data list may be capped). */
const useCount = (sse: WithSSEProps['sse']): number => sse.count;

// ---- the four micro-frontends -----------------------------------------------------------------

interface LogLine {
  id: string;
  ts: number;
  level: string;
  text: string;
}

function LogsView({ sse }: WithSSEProps) {
  const lines = (sse.data as LogLine[]) ?? [];
  const count = useCount(sse);
  return (
    <PanelFrame id="logs" title="ETL logs" channel="logs:demo:etl-1" sse={sse} count={count}>
      <ol className="logs">
        {lines
          .slice()
          .reverse()
          .map((l) => (
            <li key={l.id} className={`lvl-${l.level}`}>
              <time>{time(l.ts)}</time> <b>{l.level}</b> {l.text}
            </li>
          ))}
      </ol>
    </PanelFrame>
  );
}
const LogsPanel = withSSE(LogsView, {
  channels: 'logs:demo:etl-1',
  accumulate: true,
  maxItems: 40,
  transform: (m): LogLine => {
    const p = (m.payload ?? {}) as Record<string, unknown>;
    const text = typeof p.message === 'string' ? p.message : typeof p.msg === 'string' ? p.msg : JSON.stringify(m.payload);
    return { id: m.id, ts: m.ts, level: typeof p.level === 'string' ? p.level : 'info', text };
  },
  clientOptions,
});

interface WorkflowStatus {
  workflow?: string;
  state?: string;
  progress?: number;
}

function WorkflowView({ sse }: WithSSEProps) {
  const history = (sse.data as { ts: number; s: WorkflowStatus }[]) ?? [];
  const count = useCount(sse);
  const current = history[history.length - 1]?.s;
  const progress = Math.max(0, Math.min(100, Number(current?.progress ?? 0)));
  return (
    <PanelFrame id="workflow" title="Workflow status" channel="workflow:demo:wf-1" sse={sse} count={count}>
      {current ? (
        <div className="workflow">
          <div className="wf-head">
            <span className="wf-name">{current.workflow ?? 'wf-1'}</span>
            <span className={`state state-${current.state}`} data-testid="wf-state">
              {current.state ?? '?'}
            </span>
          </div>
          <div className="progress">
            <div style={{ width: `${progress}%` }} />
          </div>
          <p className="muted">{progress}% complete</p>
          <ul className="wf-history">
            {history
              .slice(-6)
              .reverse()
              .map((h, i) => (
                <li key={i}>
                  <time>{time(h.ts)}</time> {h.s.state} ({h.s.progress ?? 0}%)
                </li>
              ))}
          </ul>
        </div>
      ) : (
        <p className="muted">No status yet.</p>
      )}
    </PanelFrame>
  );
}
const WorkflowPanel = withSSE(WorkflowView, {
  channels: 'workflow:demo:wf-1',
  accumulate: true,
  maxItems: 20,
  transform: (m) => ({ ts: m.ts, s: (m.payload ?? {}) as WorkflowStatus }),
  clientOptions,
});

function Sparkline({ values }: { values: number[] }) {
  if (values.length < 2) return <svg className="spark" viewBox="0 0 200 50" />;
  const max = Math.max(...values, 1);
  const min = Math.min(...values, 0);
  const pts = values.map((v, i) => `${(i / (values.length - 1)) * 200},${48 - ((v - min) / (max - min || 1)) * 44}`).join(' ');
  return (
    <svg className="spark" viewBox="0 0 200 50" preserveAspectRatio="none">
      <polyline points={pts} fill="none" strokeWidth="2" />
    </svg>
  );
}

function MetricsView({ sse }: WithSSEProps) {
  const samples = (sse.data as Record<string, number>[]) ?? [];
  const count = useCount(sse);
  const latest = samples[samples.length - 1] ?? {};
  const keys = Object.keys(latest).filter((k) => typeof latest[k] === 'number');
  const first = keys[0];
  return (
    <PanelFrame id="metrics" title="Metrics" channel="metrics:demo" sse={sse} count={count}>
      <div className="tiles">
        {keys.length === 0 && <p className="muted">No samples yet.</p>}
        {keys.map((k) => (
          <div className="tile" key={k}>
            <span className="tile-label">{k}</span>
            <span className="tile-value">{latest[k]}</span>
          </div>
        ))}
      </div>
      {first && <Sparkline values={samples.map((s) => Number(s[first]) || 0)} />}
    </PanelFrame>
  );
}
const MetricsPanel = withSSE(MetricsView, {
  channels: 'metrics:demo',
  accumulate: true,
  maxItems: 40,
  transform: (m) => {
    const p = m.payload;
    if (typeof p === 'number') return { value: p };
    return p && typeof p === 'object' ? (p as Record<string, number>) : undefined;
  },
  clientOptions,
});

function DashboardView({ sse }: WithSSEProps) {
  const msg = sse.data as SSEMessage<Record<string, unknown>> | undefined;
  const count = useCount(sse);
  const p = msg?.payload ?? {};
  return (
    <PanelFrame id="dashboard" title="Dashboard" channel="dashboards:main" sse={sse} count={count}>
      {msg ? (
        <div className="dashboard">
          <span className="tile-label">{String(p.widget ?? msg.event)}</span>
          <span className="big" data-testid="dashboard-value">
            {typeof p.value === 'number' || typeof p.value === 'string' ? String(p.value) : JSON.stringify(p)}
          </span>
          <span className="muted">updated {time(msg.ts)}</span>
        </div>
      ) : (
        <p className="muted">No update yet.</p>
      )}
    </PanelFrame>
  );
}
const DashboardPanel = withSSE(DashboardView, { channels: 'dashboards:main', clientOptions });

function RestrictedView({ sse }: WithSSEProps) {
  const count = useCount(sse);
  return (
    <PanelFrame id="restricted" title="Restricted metrics" channel="metrics:private" sse={sse} count={count}>
      <p className="muted">{sse.status === 'open' ? 'Asking the gateway…' : 'Waiting for the connection…'}</p>
    </PanelFrame>
  );
}
const RestrictedPanel = withSSE(RestrictedView, { channels: 'metrics:private', clientOptions });

// ---- the shell: status, notices, and which micro-frontends are mounted -------------------------

const PANELS: { id: string; label: string; component: ComponentType }[] = [
  { id: 'logs', label: 'ETL logs', component: LogsPanel },
  { id: 'workflow', label: 'Workflow', component: WorkflowPanel },
  { id: 'metrics', label: 'Metrics', component: MetricsPanel },
  { id: 'dashboard', label: 'Dashboard', component: DashboardPanel },
  { id: 'restricted', label: 'Restricted channel (will be denied)', component: RestrictedPanel },
];

/** Mounts a micro-frontend in its own React root, as an independently deployed one would be. */
function MicroFrontend({ component }: { component: ComponentType }) {
  const host = useRef<HTMLDivElement>(null);
  useEffect(() => {
    const root: Root = createRoot(host.current!);
    root.render(createElementOf(component));
    return () => {
      setTimeout(() => root.unmount(), 0);
    };
  }, [component]);
  return <div className="mfe" ref={host} />;
}
function createElementOf(C: ComponentType) {
  return <C />;
}

function StatusLine() {
  const s = useSSE();
  const [, tick] = useState(0);
  useEffect(() => {
    const t = setInterval(() => tick((x) => x + 1), 1000);
    return () => clearInterval(t);
  }, []);
  const role =
    s.role === 'leader'
      ? `this tab holds the connection for ${s.tabs} tab${s.tabs === 1 ? '' : 's'}`
      : s.role === 'follower'
        ? `shared from another tab (${s.tabs} tabs)`
        : s.role === 'standalone'
          ? 'this tab has its own connection'
          : 'starting';
  return (
    <div className={`status status-${s.status}`} data-testid="status" data-status={s.status} data-role={s.role} data-connection={s.connectionId ?? ''}>
      <span className="dot" />
      <b>{s.status}</b>
      <span>connection {s.connectionId ? <code>{s.connectionId.slice(0, 12)}</code> : '—'}</span>
      <span>{role}</span>
      <span>{s.channels.length} channels on the stream</span>
      <span>EventSources opened here: {s.connects}</span>
      <span>token fetches: {hooks.tokenFetches}</span>
      {s.error && s.status !== 'open' && <span className="err">{s.error}</span>}
    </div>
  );
}

interface Notice {
  key: number;
  kind: 'gap' | 'denied' | 'expired' | 'revoked';
  text: string;
  at: number;
}

function Notices() {
  const { client } = useSSE();
  const [notices, setNotices] = useState<Notice[]>([]);
  useEffect(() => {
    let n = 0;
    const push = (kind: Notice['kind'], text: string) => setNotices((prev) => [{ key: ++n, kind, text, at: Date.now() }, ...prev].slice(0, 6));
    const offs = [
      client.on('gap', (g) => push('gap', `Gap on ${g.channels.join(', ') || 'the stream'}: events may have been missed (e.g. the gateway restarted) — the panels re-fetch their state.`)),
      client.on('denied', (d) => push('denied', `Denied: ${d.map((x) => `${x.channel} (${x.reason})`).join(', ')}`)),
      client.on('expired', () => push('expired', 'Token expired: fetched a fresh one and resumed from the last event.')),
      client.on('revoked', (r) => push('revoked', `Disconnected by the application: ${r.reason}`)),
    ];
    return () => offs.forEach((off) => off());
  }, [client]);
  return (
    <div className="notices" data-testid="notices">
      {notices.map((x) => (
        <p key={x.key} className={`notice notice-${x.kind}`} data-kind={x.kind}>
          <time>{time(x.at)}</time> {x.text}
        </p>
      ))}
    </div>
  );
}

function initialPanels(): Set<string> {
  const q = new URLSearchParams(location.search).get('panels');
  if (q === null) return new Set(['logs', 'workflow', 'metrics', 'dashboard']);
  return new Set(q.split(',').filter(Boolean));
}

function Shell() {
  const [shown, setShown] = useState(initialPanels);
  const toggle = (id: string) =>
    setShown((prev) => {
      const next = new Set(prev);
      if (next.has(id)) next.delete(id);
      else next.add(id);
      return next;
    });
  return (
    <SSEProvider config={clientOptions}>
      <header className="top">
        <h1>sse-gateway demo</h1>
        <p>
          Independent micro-frontends, one Server-Sent-Events connection per browser. Open this page in more tabs: they
          share the same stream.
        </p>
      </header>
      <StatusLine />
      <Notices />
      <nav className="toggles">
        {PANELS.map((p) => (
          <label key={p.id}>
            <input type="checkbox" data-testid={`toggle-${p.id}`} checked={shown.has(p.id)} onChange={() => toggle(p.id)} /> {p.label}
          </label>
        ))}
      </nav>
      <main className="grid">
        {PANELS.filter((p) => shown.has(p.id)).map((p) => (
          <MicroFrontend key={p.id} component={p.component} />
        ))}
      </main>
    </SSEProvider>
  );
}

createRoot(document.getElementById('app')!).render(<Shell />);
