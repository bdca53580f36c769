import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.js';
import { answersHttp, startServer, testbedBinDir } from './process.js';
import type { InstanceIdentityDocument } from '../../agent/host/imds.js';

/**
 * IMDS for tests: amazon-ec2-metadata-mock (AEMM, AWS's own IMDS mock, v1.13.0) configured
 * per test through its JSON config file, IMDSv2-only by default (`--imdsv2`: every GET needs
 * a session token from PUT /latest/api/token, else 401).
 *
 * What AEMM cannot do, and how this helper deals with it:
 * - Instance tags: AEMM has two fixed tag slots (`tags-instance-name`, `tags-instance-test`)
 *   whose paths can be renamed. More tags borrow the path of metadata the agent never reads
 *   (kernel-id, ramdisk-id, …), so up to TAG_SLOTS.length tags can be served; those
 *   borrowed paths then answer 404, as they do on most Nitro instances anyway.
 * - The directory listings (`/latest/meta-data/tags/instance`, …) are answered without a
 *   token even with --imdsv2 (AEMM's catch-all handler does not check tokens).
 * - Scheduled events: one event, with AEMM's fixed EventId (instance-event-1234567890abcdef0);
 *   a test changes its state by restarting the mock on the same port.
 * - autoscaling/target-lifecycle-state only goes InService -> Terminated after a delay
 *   (no Warmed:* states). AEMM counts delays in whole seconds from its start (Unix seconds
 *   truncated), so a 1 s delay may pass at once: give tests a margin of seconds.
 */

/** The instance identity (the agent's own type), and what else the mock serves. */
export interface ImdsConfig extends InstanceIdentityDocument {
  /** Served at /latest/user-data; absent -> 404, as on an instance launched without user data. */
  userData?: string | Uint8Array;
  /** Instance metadata tags; absent -> tags/instance answers 404 (tags in metadata disabled). */
  tags?: Record<string, string>;
  /** autoscaling/target-lifecycle-state; absent -> 404 (not in an Auto Scaling group). */
  targetLifecycleState?: 'InService' | 'Terminated' | { terminatedAfterS: number };
  /** spot/instance-action (and spot/termination-time); absent -> 404. */
  spotInstanceAction?: { action: 'terminate' | 'stop' | 'hibernate'; time?: string; afterS?: number };
  /** events/maintenance/scheduled: one event (AEMM's `events -o CODE -t STATE`; its EventId is fixed); absent -> 404. */
  scheduledEvent?: { code: 'instance-reboot' | 'system-reboot' | 'system-maintenance' | 'instance-retirement' | 'instance-stop'; state: 'active' | 'canceled' | 'completed'; notBefore?: string };
  /** events/recommendations/rebalance (AEMM's --rebalance-delay-sec); absent -> 404. */
  rebalance?: { afterS?: number; noticeTime?: string };
  /** Accept token-less (IMDSv1) requests too. Default false: IMDSv2 only. */
  allowImdsv1?: boolean;
  /** Listen on this port (e.g. to restart on the same endpoint); a free one by default. */
  port?: number;
}

export interface Imds {
  endpoint: string;
  stop(): Promise<void>;
}

const NEVER_S = 10 * 365 * 24 * 3600;

/** AEMM metadata keys whose paths can serve a tag: the two tag slots first, then borrowed ones. */
const TAG_SLOTS = ['tags-instance-name', 'tags-instance-test', 'kernel-id', 'ramdisk-id', 'ami-manifest-path', 'product-codes', 'placement-host-id', 'placement-partition-number'];

export function aemmBinary(): string {
  return testbedBinDir('ec2-metadata-mock');
}

export async function startImds(config: ImdsConfig): Promise<Imds> {
  const port = config.port ?? (await freePort());
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'zdt-imds-'));
  const configFile = path.join(dir, 'aemm-config.json');
  await fs.writeFile(configFile, JSON.stringify(aemmConfig(config, port), null, 2));
  const endpoint = `http://127.0.0.1:${port}`;
  // AEMM also reads AEMM_* variables and $HOME/aemm-config.json: give it neither.
  const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir };
  try {
    const server = await startServer({
      what: 'ec2-metadata-mock',
      file: aemmBinary(),
      args: ['--config-file', configFile],
      env,
      cwd: dir,
      timeoutMs: 15_000,
      ready: () => answersHttp(`${endpoint}/latest/api/token`, { method: 'PUT', headers: { 'X-aws-ec2-metadata-token-ttl-seconds': '60' } }),
    });
    return {
      endpoint,
      stop: async () => {
        await server.stop();
        await fs.rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await fs.rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function aemmConfig(c: ImdsConfig, port: number): object {
  const tags = Object.entries(c.tags ?? {});
  if (tags.length > TAG_SLOTS.length) throw new Error(`startImds: AEMM can serve at most ${TAG_SLOTS.length} tags, got ${tags.length}`);
  for (const [key] of tags) if (/[/{}]/.test(key)) throw new Error(`startImds: tag key ${key} cannot be an AEMM path`);

  // An empty path unregisters a route (404); unused tag slots are emptied that way.
  const paths: Record<string, string> = {
    ...(c.scheduledEvent ? {} : { events: '' }),
    ...(c.rebalance ? {} : { 'rebalance-rec-time': '' }),
  };
  const values: Record<string, string> = {
    'instance-id': c.instanceId,
    'instance-type': c.instanceType,
    'local-ipv4': c.privateIp,
    'local-hostname': `ip-${c.privateIp.replaceAll('.', '-')}.${c.region}.compute.internal`,
    hostname: `ip-${c.privateIp.replaceAll('.', '-')}.${c.region}.compute.internal`,
    'placement-availability-zone': c.availabilityZone,
    'placement-region': c.region,
    ...(c.imageId ? { 'ami-id': c.imageId } : {}),
  };
  TAG_SLOTS.forEach((slot, i) => {
    const tag = tags[i];
    if (tag) {
      paths[slot] = `/latest/meta-data/tags/instance/${tag[0]}`;
      values[slot] = tag[1];
    } else if (slot.startsWith('tags-')) {
      paths[slot] = '';
    }
  });
  if (c.targetLifecycleState === undefined) paths['target-lifecycle-state'] = '';
  if (c.spotInstanceAction === undefined) Object.assign(paths, { spot: '', 'spot-termination-time': '' });

  const lifecycle = c.targetLifecycleState;
  const terminatedAfterS = lifecycle === 'Terminated' ? 0 : typeof lifecycle === 'object' ? lifecycle.terminatedAfterS : NEVER_S;
  return {
    imdsv2: !c.allowImdsv1,
    server: { hostname: '127.0.0.1', port: String(port) },
    'mock-ip-count': -1, // every client sees spot and lifecycle notices, not only the first two IPs
    'mock-delay-sec': c.spotInstanceAction?.afterS ?? 0,
    'asg-termination-delay-sec': terminatedAfterS,
    'rebalance-delay-sec': c.rebalance?.afterS ?? 0,
    ...(c.scheduledEvent
      ? { events: { code: c.scheduledEvent.code, state: c.scheduledEvent.state, ...(c.scheduledEvent.notBefore ? { 'not-before': c.scheduledEvent.notBefore } : {}) } }
      : {}),
    metadata: { paths, values },
    dynamic: {
      values: {
        'instance-identity-document': {
          instanceId: c.instanceId,
          region: c.region,
          availabilityZone: c.availabilityZone,
          instanceType: c.instanceType,
          privateIp: c.privateIp,
          ...(c.accountId ? { accountId: c.accountId } : {}),
          ...(c.imageId ? { imageId: c.imageId } : {}),
          ...(c.architecture ? { architecture: c.architecture } : {}),
        },
      },
    },
    userdata:
      c.userData === undefined
        ? { paths: { userdata: '' } }
        : { values: { userdata: Buffer.from(c.userData).toString('base64') } },
    ...(c.spotInstanceAction || c.rebalance?.noticeTime
      ? {
          spot: {
            ...(c.spotInstanceAction ? { action: c.spotInstanceAction.action, ...(c.spotInstanceAction.time ? { time: c.spotInstanceAction.time } : {}) } : {}),
            ...(c.rebalance?.noticeTime ? { 'rebalance-rec-time': c.rebalance.noticeTime } : {}),
          },
        }
      : {}),
  };
}
