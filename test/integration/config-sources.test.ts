import fs from 'node:fs';
import { gzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildContext, instanceCacheFile } from '../../agent/context.js';
import { ConfigInvalid } from '../../agent/config/load.js';
import { readIdentity } from '../../agent/host/identity.js';
import { startImds, type Imds, type ImdsConfig } from '../testbed/imds.js';
import { startHttpTap } from '../testbed/http-tap.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';

/**
 * Config sources end to end: the /etc file, user-data and tags served by the IMDS mock
 * (amazon-ec2-metadata-mock, IMDSv2 only), and --config, merged by the agent's loader.
 */

const identity: ImdsConfig = {
  instanceId: 'i-0123456789abcdef0',
  region: 'eu-central-1',
  availabilityZone: 'eu-central-1b',
  instanceType: 'inf2.xlarge',
  privateIp: '10.1.2.3',
};

let root: TempRoot;
const servers: Imds[] = [];
beforeAll(async () => {
  root = await makeTempRoot();
});
afterEach(async () => {
  for (const s of servers.splice(0)) await s.stop();
});
afterAll(async () => {
  await root.cleanup();
});

async function imdsWith(extra: Partial<ImdsConfig>): Promise<string> {
  const s = await startImds({ ...identity, ...extra });
  servers.push(s);
  return s.endpoint;
}

function writeEtc(text: string): void {
  fs.mkdirSync(root.at('/etc/zdt-agent'), { recursive: true });
  fs.writeFileSync(root.at('/etc/zdt-agent/config.yaml'), text);
}

describe('config from the instance', () => {
  it('merges the AMI file, the user-data part, the instance tags and --config in that order', async () => {
    const endpoint = await imdsWith({
      userData: gzipSync(
        Buffer.from(`#zdt-agent\ncluster: { name: prod, kubernetesVersion: '1.34.X' }\nnode: { role: worker, labels: { pool: a } }\n`),
      ),
      tags: { 'zdt:role': 'controller', 'zdt:controller-index': '02', 'aws:autoscaling:groupName': 'prod-ctl-b' },
    });
    writeEtc(`aws: { imdsEndpoint: '${endpoint}' }\ncluster: { name: site }\nterminate: { budget: 200 }\n`);
    const override = root.at('/override.yaml');
    fs.writeFileSync(override, 'terminate: { budget: 90, drainTimeout: 60 }\n');

    const ctx = await buildContext({ root: root.dir, config: override }, { instance: 'imds', console: null });
    expect(ctx.config.cluster?.name).toBe('prod');
    expect(ctx.config.node).toMatchObject({ role: 'controller', controllerIndex: '02', labels: { pool: 'a' } });
    expect(ctx.config.terminate.budget).toBe(90);
    expect(ctx.layers.map((l) => l.source)).toEqual(['file', 'user-data', 'tags', '--config']);

    // The sources are cached (0600) for commands that must not ask IMDS.
    const cache = instanceCacheFile(ctx.paths);
    expect(fs.statSync(cache).mode & 0o777).toBe(0o600);
    const cached = await buildContext({ root: root.dir, config: override }, { instance: 'cached', console: null });
    expect(cached.config.node.controllerIndex).toBe('02');

    const id = await readIdentity(ctx.imds, { log: ctx.log, tags: ctx.instance?.tags });
    expect(id).toMatchObject({ instanceId: identity.instanceId, availabilityZone: 'eu-central-1b', instanceType: 'inf2.xlarge', asgName: 'prod-ctl-b', lifecycle: 'on-demand' });
  });

  it('an invalid user-data part stops before anything acts, naming user-data as the source', async () => {
    const endpoint = await imdsWith({ userData: `#zdt-agent\nnode: { role: worker }\netcd: {}\n` });
    writeEtc(`aws: { imdsEndpoint: '${endpoint}' }\ncluster: { name: prod }\n`);
    const err = await buildContext({ root: root.dir }, { instance: 'imds', console: null }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigInvalid);
    expect((err as ConfigInvalid).problems).toContainEqual(expect.objectContaining({ path: 'etcd', origin: 'user-data (zdt-agent part)' }));
    expect((err as ConfigInvalid).exitCode).toBe(2);
  });

  it('user-data cannot move IMDS: a config error, and the other endpoint is never asked', async () => {
    let asked = 0;
    const elsewhere = await startHttpTap('http://127.0.0.1:9', () => {
      asked++;
      return 404;
    });
    try {
      const endpoint = await imdsWith({ userData: `#zdt-agent\naws: { imdsEndpoint: '${elsewhere.endpoint}', imdsTimeout: 1 }\n` });
      writeEtc(`aws: { imdsEndpoint: '${endpoint}' }\ncluster: { name: prod }\nnode: { role: worker }\n`);
      const err = await buildContext({ root: root.dir }, { instance: 'imds', console: null }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigInvalid);
      expect((err as ConfigInvalid).oneLine()).toMatch(
        new RegExp(`^ConfigUntrusted: aws\\.imdsEndpoint: user-data \\(zdt-agent part\\) may not set it: .*; set it in ${root.at('/etc/zdt-agent/config.yaml')} or with --config`),
      );
      // Commands that read the cached sources (terminate, ssh-keys) refuse them the same way.
      const cached = await buildContext({ root: root.dir }, { instance: 'cached', console: null }).catch((e: unknown) => e);
      expect((cached as ConfigInvalid).code).toBe('ConfigUntrusted');
      expect(asked).toBe(0);
    } finally {
      await elsewhere.stop();
    }
  });

  it('a zdt:ssh-iam-group tag counts only when the AMI file allows it', async () => {
    const endpoint = await imdsWith({ tags: { 'zdt:ssh-iam-group': 'everyone' } });
    const base = `aws: { imdsEndpoint: '${endpoint}' }\nnode: { role: bastion }\nssh: { iamGroup: admins }\n`;
    writeEtc(base);
    const err = await buildContext({ root: root.dir }, { instance: 'imds', console: null }).catch((e: unknown) => e);
    expect((err as ConfigInvalid).oneLine()).toMatch(/^ConfigUntrusted: ssh\.iamGroup: instance tags \(zdt:ssh-iam-group\) may not set it: it decides who may log in; /);
    writeEtc(`${base}trust: { tags: [ssh.iamGroup] }\n`);
    const ctx = await buildContext({ root: root.dir }, { instance: 'imds', console: null });
    expect(ctx.config.ssh?.iamGroup).toBe('everyone');
  });

  it('user-data that is a plain shell script is no source; the file alone decides', async () => {
    const endpoint = await imdsWith({ userData: '#!/bin/sh\necho hello\n' });
    writeEtc(`aws: { imdsEndpoint: '${endpoint}' }\ncluster: { name: prod }\nnode: { role: worker }\n`);
    const ctx = await buildContext({ root: root.dir }, { instance: 'imds', console: null });
    expect(ctx.layers.map((l) => l.source)).toEqual(['file']);
    expect(ctx.config.node.role).toBe('worker');
  });
});
