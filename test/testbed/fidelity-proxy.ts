import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from './ports.js';

/**
 * An HTTP proxy in front of moto that forwards everything, except where moto 5.2.1 differs
 * from AWS in ways the agent depends on (each measured):
 *
 * - AttachVolume of a volume that is attached (or still detaching) answers `VolumeInUse`;
 *   moto silently moves the attachment to the new instance.
 * - Attach and detach take time: for `setAttachDelayMs` after AttachVolume, DetachVolume or
 *   TerminateInstances of the holder, DescribeVolumes shows the volume `in-use` with its
 *   attachment `attaching` / `detaching` (moto settles at once, and detaches a terminated
 *   holder's volumes the moment it is terminated).
 * - DetachVolume of an available volume answers `IncorrectState`, and DetachVolume without
 *   InstanceId works; moto answers HTTP 500 to both.
 * - CompleteLifecycleAction, RecordLifecycleActionHeartbeat and SignalResource (HTTP 500 in
 *   moto) are recorded and answered with the success response the SDK expects. A call
 *   answered by an injected fault is not recorded.
 * - ListMultipartUploads shows when each upload was initiated (moto answers the same fixed
 *   2010 date for all), from the time the proxy forwarded its CreateMultipartUpload.
 *
 * - CreateRoute of a destination the table has a route for answers `RouteAlreadyExists`;
 *   moto adds a second route.
 * - AttachNetworkInterface of an ENI that is attached (or still detaching) answers
 *   `InvalidNetworkInterface.InUse`; moto moves the attachment silently.
 * - DetachNetworkInterface takes time: for `setEniDetachDelayMs` the call is answered at once
 *   but moto detaches only when the delay has passed; meanwhile DescribeNetworkInterfaces shows
 *   the attachment `detaching` (moto detaches at once).
 *
 * Not covered: DescribeVolumes filters on `status` / `attachment.status` see moto's settled
 * state, and DescribeInstances block device mappings are not rewritten.
 *
 * Any call can also be made to fail (`inject`): throttled, 500, 503, reset, slowed, hung, or
 * answered with a given AWS error (`kind: 'error'`), such as the HTTP 400 `ValidationError`
 * "No active Lifecycle Action found with instance ID …" that AWS answers to
 * CompleteLifecycleAction when no lifecycle action waits. Calls are named by their Query
 * `Action`, the operation of a JSON `X-Amz-Target` (`ListKeys`), or for S3 `s3:<Operation>`
 * derived from method and path (path-style only: clients need `forcePathStyle: true`).
 */

export type Fault = {
  action: string;
  /** How many calls fail; all of them until `clearFaults()` when omitted. */
  times?: number;
  /** How many calls of `action` go through before the fault starts (the third part of an upload). */
  after?: number;
} & (
  | { kind: 'throttle' | '500' | '503' | 'reset' | 'hang' }
  /** The call is forwarded and done, then its connection reset: the caller never hears the answer. */
  | { kind: 'lost' }
  /** Each call is held `ms` (1000 when omitted) before it is forwarded. */
  | { kind: 'latency'; ms?: number }
  /** Each call is answered with this AWS error, in the shape of the call's protocol. */
  | { kind: 'error'; status: number; code: string; message: string }
);

export interface RecordedCall {
  /** The form parameters of the call (`InstanceId`, `LifecycleActionResult`, …). */
  params: Record<string, string>;
  at: Date;
}

export type RecordedAction = 'CompleteLifecycleAction' | 'RecordLifecycleActionHeartbeat' | 'SignalResource';

/** A call as the proxy saw it: every call, forwarded or answered by a fault. */
export interface SeenCall extends RecordedCall {
  /** The injected fault that answered it (`latency` calls were forwarded after the delay). */
  fault?: Fault['kind'] | undefined;
}

export interface FidelityProxy {
  endpoint: string;
  recorded(action: RecordedAction): RecordedCall[];
  /** How many calls of `action` (named as for `inject`) reached the proxy, faults included. */
  calls(action: string): number;
  inject(fault: Fault): void;
  clearFaults(): void;
  setAttachDelayMs(ms: number): void;
  /** Every call of `action` so far, with its parameters and the fault that answered it. */
  seen(action: string): SeenCall[];
  /** How long a DetachNetworkInterface takes to release the ENI (default 0). */
  setEniDetachDelayMs(ms: number): void;
  stop(): Promise<void>;
}

/** The wire shape of a call, which decides how its errors look. */
type Protocol = 'ec2' | 'query' | 'json' | 's3';

interface Call {
  req: http.IncomingMessage;
  body: Buffer;
  protocol: Protocol;
  action: string;
  params: URLSearchParams;
}

interface Reply {
  status: number;
  headers: http.OutgoingHttpHeaders;
  body: Buffer | string;
}

interface Attachment {
  instanceId: string;
  device: string;
  attachTime: string;
}

interface Transition extends Attachment {
  state: 'attaching' | 'detaching';
  until: number;
}

const RECORDED: Record<RecordedAction, { xmlns: string; hasResult: boolean }> = {
  CompleteLifecycleAction: { xmlns: 'http://autoscaling.amazonaws.com/doc/2011-01-01/', hasResult: true },
  RecordLifecycleActionHeartbeat: { xmlns: 'http://autoscaling.amazonaws.com/doc/2011-01-01/', hasResult: true },
  SignalResource: { xmlns: 'http://cloudformation.amazonaws.com/doc/2010-05-15/', hasResult: false },
};

/** [HTTP status, error code] of each injected failure, per protocol, as AWS answers them. */
const FAULT_ERRORS: Record<'throttle' | '500' | '503', Record<Protocol, [number, string]>> = {
  throttle: { ec2: [503, 'RequestLimitExceeded'], query: [400, 'Throttling'], json: [400, 'ThrottlingException'], s3: [503, 'SlowDown'] },
  '500': { ec2: [500, 'InternalError'], query: [500, 'InternalFailure'], json: [500, 'InternalFailure'], s3: [500, 'InternalError'] },
  '503': { ec2: [503, 'Unavailable'], query: [503, 'ServiceUnavailable'], json: [503, 'ServiceUnavailable'], s3: [503, 'ServiceUnavailable'] },
};

export async function startFidelityProxy(o: { target: string; attachDelayMs?: number }): Promise<FidelityProxy> {
  const target = new URL(o.target);
  let attachDelayMs = o.attachDelayMs ?? 0;
  let eniDetachDelayMs = 0;
  /** ENI id -> the detach moto has not been told yet. */
  const eniDetaching = new Map<string, { timer: NodeJS.Timeout; send: () => Promise<unknown> }>();
  let faults: (Fault & { times: number })[] = [];
  const seen = new Map<string, SeenCall[]>();
  const recorded = new Map<string, RecordedCall[]>();
  const counted = new Map<string, number>();
  const transitions = new Map<string, Transition>();
  /** UploadId -> when its CreateMultipartUpload was answered. */
  const initiated = new Map<string, Date>();

  /** S3 calls forwarded; multipart upload times kept and shown as AWS does. */
  async function s3(call: Call): Promise<Reply> {
    const reply = await forward(call);
    if (reply.status !== 200) return reply;
    const xml = reply.body.toString();
    if (call.action === 's3:CreateMultipartUpload') {
      const id = tag(xml, 'UploadId');
      if (id) initiated.set(id, new Date());
    } else if (call.action === 's3:ListMultipartUploads') {
      const body = xml.replace(/<Upload>([\s\S]*?)<\/Upload>/g, (upload, inner: string) => {
        const at = initiated.get(tag(inner, 'UploadId') ?? '');
        return at ? upload.replace(/<Initiated>[^<]*<\/Initiated>/, `<Initiated>${at.toISOString()}</Initiated>`) : upload;
      });
      return { ...reply, body };
    }
    return reply;
  }

  const upstream = (method: string, path: string, headers: http.IncomingHttpHeaders, body: Buffer): Promise<Reply> =>
    new Promise((resolve, reject) => {
      const h: http.OutgoingHttpHeaders = { ...headers, host: target.host, 'content-length': String(body.length) };
      delete h['transfer-encoding'];
      const up = http.request({ host: target.hostname, port: target.port, method, path, headers: h }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const out: http.OutgoingHttpHeaders = { ...res.headers };
          delete out['transfer-encoding'];
          delete out.connection;
          resolve({ status: res.statusCode ?? 502, headers: out, body: Buffer.concat(chunks) });
        });
      });
      up.on('error', reject);
      up.end(body);
    });

  const forward = (call: Call, body = call.body) => upstream(call.req.method ?? 'GET', call.req.url ?? '/', call.req.headers, body);

  /** Moto's view of volumes, asked with the caller's credentials (moto routes by their scope). */
  const describeVolumes = async (call: Call, params: Record<string, string>): Promise<Map<string, { status: string; attachment?: Attachment }>> => {
    const body = new URLSearchParams({ Action: 'DescribeVolumes', Version: call.params.get('Version') ?? '2016-11-15', ...params });
    const headers = { authorization: call.req.headers.authorization, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' };
    const reply = await upstream('POST', '/', headers, Buffer.from(body.toString()));
    const volumes = new Map<string, { status: string; attachment?: Attachment }>();
    if (reply.status !== 200) return volumes;
    eachVolumeItem(reply.body.toString(), (item) => {
      const { volumeId, status, attachments } = splitVolumeItem(item);
      const instanceId = tag(attachments, 'instanceId');
      volumes.set(volumeId, {
        status,
        ...(instanceId ? { attachment: { instanceId, device: tag(attachments, 'device') ?? '', attachTime: tag(attachments, 'attachTime') ?? '' } } : {}),
      });
      return item;
    });
    return volumes;
  };

  const inTransition = (volumeId: string): Transition | undefined => {
    const t = transitions.get(volumeId);
    if (t && t.until > Date.now()) return t;
    transitions.delete(volumeId);
    return undefined;
  };

  const startTransition = (volumeId: string, state: Transition['state'], a: Attachment) =>
    transitions.set(volumeId, { ...a, state, until: Date.now() + attachDelayMs });

  /** Moto's view of the ENIs: id -> instance attached to and attachment id (when attached). */
  const describeEnis = async (call: Call): Promise<Map<string, { instanceId?: string; attachmentId?: string }>> => {
    const body = new URLSearchParams({ Action: 'DescribeNetworkInterfaces', Version: call.params.get('Version') ?? '2016-11-15' });
    const headers = { authorization: call.req.headers.authorization, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' };
    const reply = await upstream('POST', '/', headers, Buffer.from(body.toString()));
    const enis = new Map<string, { instanceId?: string; attachmentId?: string }>();
    eachItem(reply.body.toString(), 'networkInterfaceSet', (item) => {
      const attachment = /<attachment>([\s\S]*?)<\/attachment>/.exec(item)?.[1] ?? '';
      const instanceId = tag(attachment, 'instanceId');
      const attachmentId = tag(attachment, 'attachmentId');
      enis.set(tag(item, 'networkInterfaceId') ?? '', { ...(instanceId ? { instanceId } : {}), ...(attachmentId ? { attachmentId } : {}) });
      return item;
    });
    return enis;
  };

  async function ec2(call: Call): Promise<Reply> {
    const p = call.params;
    const volumeId = p.get('VolumeId') ?? '';
    switch (call.action) {
      case 'CreateRoute': {
        const dest = p.get('DestinationCidrBlock') ?? p.get('DestinationIpv6CidrBlock') ?? '';
        const body = new URLSearchParams({ Action: 'DescribeRouteTables', Version: p.get('Version') ?? '2016-11-15', 'RouteTableId.1': p.get('RouteTableId') ?? '' });
        const headers = { authorization: call.req.headers.authorization, 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' };
        const table = (await upstream('POST', '/', headers, Buffer.from(body.toString()))).body.toString();
        if (new RegExp(`<destination(Ipv6)?CidrBlock>${dest.replace(/[.]/g, '\\.')}</destination(Ipv6)?CidrBlock>`).test(table)) {
          return awsError(call, 400, 'RouteAlreadyExists', `The route identified by ${dest} already exists.`);
        }
        return forward(call);
      }
      case 'AttachNetworkInterface': {
        const eniId = p.get('NetworkInterfaceId') ?? '';
        if (eniDetaching.has(eniId) || (await describeEnis(call)).get(eniId)?.instanceId) {
          return awsError(call, 400, 'InvalidNetworkInterface.InUse', `Interface: [${eniId}] in use.`);
        }
        return forward(call);
      }
      case 'DetachNetworkInterface': {
        if (eniDetachDelayMs <= 0) return forward(call);
        const attachmentId = p.get('AttachmentId') ?? '';
        const eniId = [...(await describeEnis(call))].find(([, e]) => e.attachmentId === attachmentId)?.[0];
        if (!eniId) return forward(call);
        if (!eniDetaching.has(eniId)) {
          const send = () => forward(call).finally(() => eniDetaching.delete(eniId));
          eniDetaching.set(eniId, { timer: setTimeout(() => void send().catch(() => undefined), eniDetachDelayMs), send });
        }
        return xmlReply(200, `<DetachNetworkInterfaceResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>${randomUUID()}</requestId><return>true</return></DetachNetworkInterfaceResponse>`);
      }
      case 'DescribeNetworkInterfaces': {
        const reply = await forward(call);
        if (reply.status !== 200 || eniDetaching.size === 0) return reply;
        const body = eachItem(reply.body.toString(), 'networkInterfaceSet', (item) =>
          eniDetaching.has(tag(item, 'networkInterfaceId') ?? '')
            ? item.replace(/(<attachment>[\s\S]*?<status>)attached(<\/status>)/, '$1detaching$2')
            : item,
        );
        return { ...reply, body };
      }
      case 'AttachVolume': {
        const volume = (await describeVolumes(call, { 'VolumeId.1': volumeId })).get(volumeId);
        if (volume?.attachment || inTransition(volumeId)) {
          return awsError(call, 400, 'VolumeInUse', `${volumeId} is already attached to an instance`);
        }
        const reply = await forward(call);
        if (reply.status === 200) {
          startTransition(volumeId, 'attaching', {
            instanceId: p.get('InstanceId') ?? '',
            device: p.get('Device') ?? '',
            attachTime: tag(reply.body.toString(), 'attachTime') ?? new Date().toISOString(),
          });
        }
        return reply;
      }
      case 'DetachVolume': {
        const volume = (await describeVolumes(call, { 'VolumeId.1': volumeId })).get(volumeId);
        if (!volume) return forward(call);
        if (!volume.attachment) return awsError(call, 400, 'IncorrectState', `Volume '${volumeId}' is in the '${volume.status}' state.`);
        if (!p.has('InstanceId')) p.set('InstanceId', volume.attachment.instanceId);
        const reply = await forward(call, Buffer.from(p.toString()));
        if (reply.status === 200) startTransition(volumeId, 'detaching', volume.attachment);
        return reply;
      }
      case 'TerminateInstances': {
        const filter: Record<string, string> = { 'Filter.1.Name': 'attachment.instance-id' };
        for (let i = 1; p.has(`InstanceId.${i}`); i++) filter[`Filter.1.Value.${i}`] = p.get(`InstanceId.${i}`)!;
        const held = await describeVolumes(call, filter);
        const reply = await forward(call);
        if (reply.status === 200) {
          for (const [id, v] of held) if (v.attachment) startTransition(id, 'detaching', v.attachment);
        }
        return reply;
      }
      case 'DescribeVolumes': {
        const reply = await forward(call);
        if (reply.status !== 200 || transitions.size === 0) return reply;
        return { ...reply, body: eachVolumeItem(reply.body.toString(), (item) => showTransition(item, inTransition(splitVolumeItem(item).volumeId))) };
      }
      default:
        return forward(call);
    }
  }

  function record(call: Call): Reply {
    const action = call.action as RecordedAction;
    const list = recorded.get(action) ?? [];
    list.push({ params: Object.fromEntries(call.params), at: new Date() });
    recorded.set(action, list);
    const { xmlns, hasResult } = RECORDED[action];
    const result = hasResult ? `<${action}Result/>` : '';
    return xmlReply(200, `<${action}Response xmlns="${xmlns}">${result}<ResponseMetadata><RequestId>${randomUUID()}</RequestId></ResponseMetadata></${action}Response>`);
  }

  /** The next fault for this call, counted down; undefined when the call goes through. */
  function takeFault(action: string): Fault | undefined {
    const fault = faults.find((f) => f.action === action && f.times > 0);
    if (!fault) return undefined;
    if (fault.after) {
      fault.after -= 1;
      return undefined;
    }
    fault.times -= 1;
    return fault;
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const call = identify(req, Buffer.concat(chunks));
    counted.set(call.action, (counted.get(call.action) ?? 0) + 1);
    const fault = takeFault(call.action);
    const list = seen.get(call.action) ?? [];
    list.push({ params: Object.fromEntries(call.params), at: new Date(), fault: fault?.kind });
    seen.set(call.action, list);
    if (fault?.kind === 'reset') return void req.socket.resetAndDestroy();
    if (fault?.kind === 'hang') return; // never answered; the client times out, or stop() closes it
    if (fault?.kind === 'latency') await sleep(fault.ms ?? 1000);
    else if (fault?.kind === 'error') return send(res, awsError(call, fault.status, fault.code, fault.message), req.method);
    else if (fault && fault.kind !== 'lost') {
      const [status, code] = FAULT_ERRORS[fault.kind][call.protocol];
      return send(res, awsError(call, status, code, `injected ${fault.kind} by the fidelity proxy`), req.method);
    }
    const reply = call.action in RECORDED ? record(call) : call.protocol === 'ec2' ? await ec2(call) : call.protocol === 's3' ? await s3(call) : await forward(call);
    if (fault?.kind === 'lost') return void req.socket.resetAndDestroy();
    send(res, reply, req.method);
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: Error) => {
      if (!res.headersSent) send(res, { status: 502, headers: { 'content-type': 'text/plain' }, body: `fidelity proxy: ${err.message}` }, req.method);
    });
  });
  const port = await freePort();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });

  return {
    endpoint: `http://127.0.0.1:${port}`,
    recorded: (action) => [...(recorded.get(action) ?? [])],
    calls: (action) => counted.get(action) ?? 0,
    inject: (fault) => void faults.push({ ...fault, times: fault.times ?? Infinity }),
    seen: (action) => [...(seen.get(action) ?? [])],
    clearFaults: () => void (faults = []),
    setEniDetachDelayMs: (ms) => {
      eniDetachDelayMs = ms;
      // A shorter delay applies to the detaches under way too.
      if (ms <= 0) {
        for (const d of eniDetaching.values()) {
          clearTimeout(d.timer);
          void d.send().catch(() => undefined);
        }
      }
    },
    setAttachDelayMs: (ms) => {
      attachDelayMs = ms;
      // Transitions under way end no later than the new delay allows.
      for (const t of transitions.values()) t.until = Math.min(t.until, Date.now() + ms);
    },
    stop: () =>
      new Promise<void>((resolve) => {
        for (const d of eniDetaching.values()) clearTimeout(d.timer);
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function identify(req: http.IncomingMessage, body: Buffer): Call {
  // SigV4: Credential=<key>/<date>/<region>/<service>/aws4_request. Unsigned requests are S3 to moto too.
  const service = /Credential=[^/]+\/[^/]+\/[^/]+\/([^/]+)\//.exec(req.headers.authorization ?? '')?.[1] ?? 's3';
  const url = new URL(req.url ?? '/', 'http://proxy');
  const target = req.headers['x-amz-target'];
  const form = String(req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded');
  const params = new URLSearchParams(form ? body.toString('utf8') : url.search);
  const base = { req, body, params };
  if (typeof target === 'string') return { ...base, protocol: 'json', action: target.slice(target.lastIndexOf('.') + 1) };
  const action = params.get('Action');
  if (action) return { ...base, protocol: service === 'ec2' ? 'ec2' : 'query', action };
  if (service === 's3') return { ...base, protocol: 's3', action: `s3:${s3Operation(req, url)}` };
  // Other REST services (Route 53): named by method and path, errors in the Query shape.
  return { ...base, protocol: 'query', action: `${service}:${req.method} ${url.pathname}` };
}

const VERB: Record<string, string> = { GET: 'Get', PUT: 'Put', DELETE: 'Delete', HEAD: 'Head', POST: 'Post' };
const S3_SUBRESOURCES = ['acl', 'cors', 'encryption', 'lifecycle', 'location', 'policy', 'tagging', 'versioning', 'object-lock', 'retention', 'legal-hold'];

/** The S3 operation of a path-style request; sub-resources read as Get/Put/Delete + Bucket/Object + name. */
function s3Operation(req: http.IncomingMessage, url: URL): string {
  const [, bucket = '', ...key] = url.pathname.split('/');
  const onObject = key.join('/') !== '';
  const q = url.searchParams;
  const verb = VERB[req.method ?? 'GET'] ?? req.method ?? 'Get';
  const sub = [...q.keys()].find((k) => S3_SUBRESOURCES.includes(k));
  if (!bucket) return 'ListBuckets';
  if (q.has('uploads')) return req.method === 'GET' ? 'ListMultipartUploads' : 'CreateMultipartUpload';
  if (q.has('uploadId')) return { PUT: 'UploadPart', POST: 'CompleteMultipartUpload', DELETE: 'AbortMultipartUpload' }[req.method ?? ''] ?? 'ListParts';
  if (req.method === 'POST' && q.has('delete')) return 'DeleteObjects';
  if (sub) return `${verb}${onObject ? 'Object' : 'Bucket'}${sub.split('-').map((w) => w[0]!.toUpperCase() + w.slice(1)).join('')}`;
  if (onObject) return req.method === 'PUT' && req.headers['x-amz-copy-source'] ? 'CopyObject' : `${verb}Object`;
  if (req.method === 'GET') return q.get('list-type') === '2' ? 'ListObjectsV2' : 'ListObjects';
  return req.method === 'PUT' ? 'CreateBucket' : `${verb}Bucket`;
}

/** An error in the shape the SDK parses for the call's protocol. */
function awsError(call: Call, status: number, code: string, message: string): Reply {
  const id = randomUUID();
  const msg = message.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  switch (call.protocol) {
    case 'ec2':
      return xmlReply(status, `<Response><Errors><Error><Code>${code}</Code><Message>${msg}</Message></Error></Errors><RequestID>${id}</RequestID></Response>`);
    case 'query':
      return xmlReply(status, `<ErrorResponse><Error><Type>${status < 500 ? 'Sender' : 'Receiver'}</Type><Code>${code}</Code><Message>${msg}</Message></Error><RequestId>${id}</RequestId></ErrorResponse>`);
    case 's3':
      return xmlReply(status, `<Error><Code>${code}</Code><Message>${msg}</Message><RequestId>${id}</RequestId></Error>`);
    case 'json':
      return {
        status,
        headers: { 'content-type': call.req.headers['content-type'] ?? 'application/x-amz-json-1.1', 'x-amzn-errortype': code, 'x-amzn-requestid': id },
        body: JSON.stringify({ __type: code, message }),
      };
  }
}

function xmlReply(status: number, xml: string): Reply {
  return { status, headers: { 'content-type': 'text/xml' }, body: `<?xml version="1.0" encoding="UTF-8"?>\n${xml}` };
}

function send(res: http.ServerResponse, reply: Reply, method?: string): void {
  const headers = { ...reply.headers };
  // A HEAD reply keeps the length of the body it describes.
  if (method !== 'HEAD') headers['content-length'] = Buffer.byteLength(reply.body);
  res.writeHead(reply.status, headers);
  res.end(method === 'HEAD' ? undefined : reply.body);
}

function tag(xml: string, name: string): string | undefined {
  return new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml)?.[1];
}

/** Each top-level `<item>` of moto's `<volumeSet>`, replaced by `fn(item)`; nested items (tags, attachments) stay inside. */
function eachVolumeItem(xml: string, fn: (item: string) => string): string {
  return eachItem(xml, 'volumeSet', fn);
}

/** Each top-level `<item>` of the set `<name>`, replaced by `fn(item)`. */
function eachItem(xml: string, name: string, fn: (item: string) => string): string {
  const open = xml.indexOf(`<${name}>`);
  const close = xml.lastIndexOf(`</${name}>`);
  if (open < 0 || close < 0) return xml;
  const inner = xml.slice(open + name.length + 2, close);
  let out = '';
  let depth = 0;
  let itemStart = 0;
  let copied = 0;
  for (const m of inner.matchAll(/<item>|<\/item>/g)) {
    if (m[0] === '<item>' && depth++ === 0) itemStart = m.index;
    if (m[0] === '</item>' && --depth === 0) {
      const end = m.index + m[0].length;
      out += inner.slice(copied, itemStart) + fn(inner.slice(itemStart, end));
      copied = end;
    }
  }
  return xml.slice(0, open + name.length + 2) + out + inner.slice(copied) + xml.slice(close);
}

const ATTACHMENT_SET = /<attachmentSet\/>|<attachmentSet>[\s\S]*?<\/attachmentSet>/;

/** A volume item's id, its own status (not its attachment's) and its attachment set. */
function splitVolumeItem(item: string): { volumeId: string; status: string; attachments: string } {
  const attachments = ATTACHMENT_SET.exec(item)?.[0] ?? '';
  return { volumeId: tag(item, 'volumeId') ?? '', status: tag(item.replace(ATTACHMENT_SET, ''), 'status') ?? '', attachments };
}

/** The volume as AWS shows it mid-transition: in-use, one attachment attaching or detaching. */
function showTransition(item: string, t: Transition | undefined): string {
  if (!t) return item;
  const { volumeId } = splitVolumeItem(item);
  const attachment =
    `<attachmentSet><item><volumeId>${volumeId}</volumeId><instanceId>${t.instanceId}</instanceId><device>${t.device}</device>` +
    `<status>${t.state}</status><attachTime>${t.attachTime}</attachTime><deleteOnTermination>false</deleteOnTermination></item></attachmentSet>`;
  const placeholder = '\u0000attachments\u0000';
  return item
    .replace(ATTACHMENT_SET, placeholder)
    .replace(/<status>[^<]*<\/status>/, '<status>in-use</status>')
    .replace(placeholder, attachment);
}
