import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { EC2Client, RunInstancesCommand, StopInstancesCommand, TerminateInstancesCommand } from '@aws-sdk/client-ec2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeAws } from '../../agent/host/aws.js';
import { makeExec } from '../../agent/host/exec.js';
import { Imds } from '../../agent/host/imds.js';
import { silentLogger } from '../../agent/log/logger.js';
import { configSchema } from '../../agent/config/schema.js';
import { classifyEvent } from '../../agent/terminate/classify.js';
import { freePort } from '../testbed/ports.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startImds, type ImdsConfig, type Imds as ImdsServer } from '../testbed/imds.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { REGION, useTestCredentials } from '../support/terminate-env.js';

/** Every signal of a shutdown turned into one event: AEMM for IMDS, moto for the EC2 state. */

let moto: Moto;
let proxy: FidelityProxy;
let ec2: EC2Client;
const servers: ImdsServer[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  useTestCredentials();
  moto = await startMoto();
  proxy = await startFidelityProxy({ target: moto.endpoint });
  ec2 = new EC2Client({ region: REGION, endpoint: proxy.endpoint, credentials: { accessKeyId: 'testing', secretAccessKey: 'testing' } });
});

afterAll(async () => {
  for (const s of servers) await s.stop();
  await proxy?.stop();
  await moto?.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function instance(state?: 'stopped' | 'terminated'): Promise<string> {
  const r = await ec2.send(new RunInstancesCommand({ ImageId: 'ami-12c6146b', InstanceType: 't3.micro', MinCount: 1, MaxCount: 1 }));
  const id = r.Instances![0]!.InstanceId!;
  if (state === 'stopped') await ec2.send(new StopInstancesCommand({ InstanceIds: [id] }));
  if (state === 'terminated') await ec2.send(new TerminateInstancesCommand({ InstanceIds: [id] }));
  return id;
}

async function classify(o: { instanceId: string; imds?: Partial<ImdsConfig>; env?: NodeJS.ProcessEnv; flag?: 'stop'; imdsEndpoint?: string; systemdMarker?: string }) {
  let endpoint = o.imdsEndpoint;
  if (!endpoint) {
    const s = await startImds({ instanceId: o.instanceId, region: REGION, availabilityZone: `${REGION}a`, instanceType: 't3.micro', privateIp: '10.0.0.9', ...o.imds });
    servers.push(s);
    endpoint = s.endpoint;
  }
  const config = configSchema.parse({ cluster: { name: 'c' }, aws: { region: REGION, endpoint: proxy.endpoint, maxAttempts: 1 } });
  return classifyEvent({
    flag: o.flag,
    env: o.env ?? {},
    imds: new Imds({ endpoint, log: silentLogger, requestTimeoutMs: 1000 }),
    aws: makeAws({ aws: config.aws, region: async () => REGION }),
    exec: makeExec(silentLogger),
    log: silentLogger,
    instanceId: o.instanceId,
    signal: AbortSignal.timeout(5000),
    systemdMarker: o.systemdMarker,
  });
}

describe('classifying a shutdown', () => {
  it('a spot interruption notice to terminate is a terminate; to stop or hibernate a stop', async () => {
    const id = await instance();
    expect(await classify({ instanceId: id, imds: { spotInstanceAction: { action: 'terminate' } } })).toMatchObject({ event: 'terminate', source: 'imds spot/instance-action=terminate' });
    expect(await classify({ instanceId: id, imds: { spotInstanceAction: { action: 'hibernate' } } })).toMatchObject({ event: 'stop' });
  });

  it('an Auto Scaling target lifecycle state Terminated is a terminate inside a lifecycle hook', async () => {
    const id = await instance();
    const c = await classify({ instanceId: id, imds: { targetLifecycleState: 'Terminated' } });
    expect(c).toMatchObject({ event: 'terminate', lifecycleTerminating: true, evidence: { lifecycle: 'Terminated', ec2: 'running' } });
  });

  it("the instance's own EC2 state decides when IMDS says nothing", async () => {
    expect(await classify({ instanceId: await instance('stopped') })).toMatchObject({ event: 'stop', source: 'ec2 instance state stopped' });
    expect(await classify({ instanceId: await instance('terminated') })).toMatchObject({ event: 'terminate', source: 'ec2 instance state terminated' });
    const c = await classify({ instanceId: await instance(), imds: { targetLifecycleState: 'InService' } });
    expect(c).toMatchObject({ event: 'unknown', evidence: { lifecycle: 'InService', ec2: 'running' } });
  });

  it("OpenRC's RC_REBOOT=YES is a reboot, and --event overrides everything", async () => {
    const id = await instance();
    expect(await classify({ instanceId: id, env: { RC_REBOOT: 'YES' } })).toMatchObject({ event: 'reboot', source: 'RC_REBOOT=YES (OpenRC reboot runlevel)' });
    expect(await classify({ instanceId: id, env: { RC_REBOOT: 'YES' }, flag: 'stop' })).toMatchObject({ event: 'stop', source: '--event' });
  });

  it('on systemd, a queued reboot.target is a reboot', async () => {
    const id = await instance();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-systemd-'));
    dirs.push(dir);
    fs.mkdirSync(path.join(dir, 'run/systemd/system'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'bin'));
    fs.writeFileSync(path.join(dir, 'bin/systemctl'), '#!/bin/sh\necho "1234 reboot.target start running"\n', { mode: 0o755 });
    const oldPath = process.env.PATH;
    process.env.PATH = `${path.join(dir, 'bin')}:${oldPath}`;
    try {
      expect(await classify({ instanceId: id, systemdMarker: path.join(dir, 'run/systemd/system') })).toMatchObject({ event: 'reboot', source: 'systemd reboot.target' });
    } finally {
      process.env.PATH = oldPath;
    }
  });

  it('with IMDS unreachable and EC2 failing, the event is unknown, quickly', async () => {
    const port = await freePort();
    proxy.inject({ action: 'DescribeInstances', kind: '500' });
    try {
      const started = Date.now();
      const c = await classify({ instanceId: 'i-0000000000000dead', imdsEndpoint: `http://127.0.0.1:${port}` });
      expect(c.event).toBe('unknown');
      expect(c.evidence.ec2).toMatch(/^unavailable/);
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      proxy.clearFaults();
    }
  });
});
