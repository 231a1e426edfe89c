// Compiled (never run) by test/typecheck.test.js: the published .d.ts must type real usage.
import { Publisher, PublishError, ConfigError, Control, ControlError, loadGrpcPackage, DISABLED } from '@sse-gateway/publisher';
import type { PublishResult, BatchResult, PublishRequest, PublishResponse__Output, ResultCode, ControlResult, ControlResponse__Output } from '@sse-gateway/publisher';

async function main(): Promise<void> {
  const pub = new Publisher({ addr: 'localhost:50051', ca: 'certs/ca.pem', cert: 'c.pem', key: 'k.pem', timeoutMs: 2000 });
  const r: PublishResult = await pub.publish('dashboards:d1', { total: 3 }, { event: 'update', idempotencyKey: 'k1' });
  if (!r.ok) {
    const code: string = r.code;
    console.log(code, r.message);
  }
  const b: BatchResult = await pub.publishBatch([
    { channel: 'metrics:ws1', data: 1 },
    { channel: 'logs:ws1:wf1', data: ['a'], event: 'log', audience: { userIds: ['alice'] } },
  ]);
  const ids: string[] = b.results.map((x) => x.id);
  await pub.publishLog('ws1', 'wf1', { line: 'x' }, { strict: true });
  await pub.publishLog('ws1', null, 'workspace-wide');
  await pub.publishMetric(42, { cpu: 0.5 });
  try {
    await pub.publish('x', 1, { strict: true });
  } catch (e) {
    if (e instanceof PublishError) console.log(e.code, e.details, e.grpcCode);
    if (e instanceof ConfigError) console.log(e.message);
  }
  // The generated client is typed too.
  const req: PublishRequest = { channel: 'metrics:ws1', data: '1', idempotencyKey: 'k' };
  pub.client.publish(req, (err, res?: PublishResponse__Output) => {
    if (res) console.log(res.id.toUpperCase(), res.delivered + 1, ids);
  });
  // The off switch: a boolean, or the same words as $SSE_GATEWAY_ENABLED.
  const off = new Publisher({ enabled: false });
  const offToo = new Publisher({ enabled: 'off' });
  const d = await off.publish('dashboards:d1', 1);
  if (d.code === 'DISABLED') console.log(off.enabled, offToo.enabled, d.message);
  const same: boolean = b.code === DISABLED;
  const codes: ResultCode[] = [d.code, b.code, 'UNAVAILABLE'];
  console.log(codes, same);
  const pkg = loadGrpcPackage();
  const Client = pkg.ssegateway.v1.Publisher;
  console.log(typeof Client.service.Publish.path);
  await pub.close();
  // Control: the same options.
  const control = new Control({ addr: 'localhost:50051', cert: 'c.pem', key: 'k.pem', strict: true });
  const c: ControlResult = await control.disconnect('u42', { reason: 'signed out', revokeTokens: true });
  const u = await control.unsubscribe('u42', 'logs:ws1:**', { reason: 'removed', timeoutMs: 1000 });
  console.log(c.streams + u.streams, c.code === DISABLED);
  control.client.disconnect({ userId: 'u42' }, (err, res?: ControlResponse__Output) => console.log(err, res?.streams));
  try {
    await control.unsubscribe('u42', 'logs:**');
  } catch (e) {
    if (e instanceof ControlError) console.log(e.code, e.details);
  }
  await control.close();
}

// @ts-expect-error - revokeTokens is a boolean
new Control().disconnect('u', { revokeTokens: 'yes' });

// @ts-expect-error - a channel must be a string
new Publisher().publish(1, {});
// @ts-expect-error - unknown option
new Publisher({ timeout: 5 });
// @ts-expect-error - enabled is a boolean or a string
new Publisher({ enabled: 0 });

void main;
