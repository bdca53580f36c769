import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ConfigInvalid, parseYamlLayer, resolveConfig, TAG_KEYS, tagsLayer, type Layer } from '../../agent/config/load.js';
import { configSchema } from '../../agent/config/schema.js';
import { TRUST, trustProblems } from '../../agent/config/trust.js';

/**
 * The trust model (agent/config/trust.ts, docs/config.md "Trust"): every key has a level, and
 * user-data and tags set only the keys their writers may decide, unless the local file allows.
 */

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
}

/** Every key of the schema as the docs list it: sections are walked, maps and lists are keys. */
function schemaKeys(): string[] {
  const out: string[] = [];
  const walk = (s: JsonSchema, prefix: string) => {
    if (s.type === 'object' && s.properties) {
      for (const [k, v] of Object.entries(s.properties)) walk(v, prefix ? `${prefix}.${k}` : k);
    } else out.push(prefix);
  };
  walk(z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchema, '');
  return out;
}

const TAG_OF = Object.fromEntries(Object.entries(TAG_KEYS).map(([tag, p]) => [p.join('.'), tag]));
const LOCAL = '/etc/zdt-agent/config.yaml';

/** A layer setting `key` (to a value trustProblems never looks at). */
function layerSetting(source: Layer['source'], key: string, value: unknown = 'x'): Layer {
  const data: Record<string, unknown> = {};
  let cur = data;
  const parts = key.split('.');
  for (const p of parts.slice(0, -1)) cur = (cur[p] = {}) as Record<string, unknown>;
  cur[parts.at(-1) as string] = value;
  return { source, origin: source === 'tags' ? 'instance tags' : source === 'user-data' ? 'user-data (zdt-agent part)' : LOCAL, data };
}

const problems = (layers: Layer[]) => trustProblems(layers, { localFile: LOCAL, tagOf: TAG_OF });
const allowIn = (field: 'userData' | 'tags', keys: string[]): Layer => ({ source: 'file', origin: LOCAL, data: { trust: { [field]: keys } } });

describe('every key has a trust level', () => {
  it('the table classifies exactly the keys of the schema', () => {
    expect(Object.keys(TRUST).sort()).toEqual(schemaKeys().sort());
  });

  it('what decides where data goes, what runs and who logs in is never open', () => {
    const mustBeLocal = [
      'aws.endpoint',
      'aws.endpoints.iam',
      'etcd.backup.bucket',
      'etcd.backup.prefix',
      'etcd.backup.kmsKeyId',
      'etcd.clientUrl',
      'etcd.keyFile',
      'ssh.iamGroup',
      'ssh.roleArn',
      'ssh.externalId',
      'ssh.mode',
      'ssh.sharedUser',
      'ssh.sudoGroup',
      'ssh.keyOptions',
      'terminate.hooksDir',
      'terminate.kubeconfig',
      'boot.kubernetesPackages',
      'node.kubeletExtraArgs',
      'cluster.extraArgs.apiServer',
      'notify.snsTopicArn',
    ];
    for (const k of mustBeLocal) expect(TRUST[k]?.level, k).toBe('local');
    for (const k of ['aws.imdsEndpoint', 'aws.imdsTimeout', 'trust.userData', 'trust.tags']) expect(TRUST[k]?.level, k).toBe('fixed');
  });
});

describe('per key and source', () => {
  const keys = Object.entries(TRUST);
  const tagged = keys.filter(([k]) => TAG_OF[k]);

  it.each(keys)('user-data setting %s: %o', (key, t) => {
    const got = problems([layerSetting('user-data', key)]);
    if (t.level === 'open') expect(got).toEqual([]);
    else expect(got).toEqual([expect.objectContaining({ path: key, origin: 'user-data (zdt-agent part)', message: expect.stringMatching(/may not set it: it decides/) })]);
  });

  it.each(tagged)('tag setting %s: %o', (key, t) => {
    const got = problems([tagsLayer({ [TAG_OF[key] as string]: 'x' }) as Layer]);
    if (t.level === 'open') expect(got).toEqual([]);
    else expect(got[0]?.message).toBe(`instance tags (${TAG_OF[key]}) may not set it: it decides who may log in`);
  });

  it.each(keys.filter(([, t]) => t.level === 'local'))('%s from user-data is taken when the local file allows it', (key) => {
    expect(problems([allowIn('userData', [key]), layerSetting('user-data', key)])).toEqual([]);
    // ... or its section
    expect(problems([allowIn('userData', [key.split('.')[0] as string]), layerSetting('user-data', key)])).toEqual([]);
    // but not from another source's list
    expect(problems([allowIn('tags', [key]), layerSetting('user-data', key)]).some((p) => p.path === key)).toBe(true);
  });

  it.each(keys.filter(([, t]) => t.level === 'fixed'))('%s cannot be allowed at all', (key) => {
    const got = problems([allowIn('userData', [key]), layerSetting('user-data', key)]);
    expect(got.map((p) => p.path)).toEqual(['trust.userData', key]);
    expect(got[0]?.message).toBe(`'${key}' can only come from the local files`);
  });

  it.each(['file', '--config'] as const)('the local source %s sets every key', (source) => {
    expect(problems(keys.map(([k]) => layerSetting(source, k)))).toEqual([]);
  });

  it('allow lists only count in the local files, and name keys that exist', () => {
    const fromUserData: Layer = { source: 'user-data', origin: 'user-data (zdt-agent part)', data: { trust: { userData: ['ssh.iamGroup'] }, ssh: { iamGroup: 'g' } } };
    expect(problems([fromUserData]).map((p) => p.path)).toEqual(['trust.userData', 'ssh.iamGroup']);
    expect(problems([allowIn('userData', ['ssh.nope'])])[0]).toMatchObject({ path: 'trust.userData', message: "'ssh.nope' is no key or section of the configuration" });
    expect(problems([allowIn('tags', ['etcd.backup.bucket'])])[0]).toMatchObject({ path: 'trust.tags', message: "no instance tag sets 'etcd.backup.bucket'" });
    expect(problems([allowIn('tags', ['ssh.iamGroup']), tagsLayer({ 'zdt:ssh-iam-group': 'ops' }) as Layer])).toEqual([]);
  });

  it('--config allows as the local file does, and the later local file wins', () => {
    const cli: Layer = { source: '--config', origin: '/root/c.yaml', data: { trust: { userData: [] } } };
    expect(problems([allowIn('userData', ['ssh']), cli, layerSetting('user-data', 'ssh.iamGroup')]).map((p) => p.path)).toEqual(['ssh.iamGroup']);
  });

  it("keys named like Object's own properties are no classified keys (the schema reports them as unknown)", () => {
    const layer: Layer = { source: 'user-data', origin: 'user-data', data: { constructor: 'x', toString: { a: 1 }, node: { hasOwnProperty: 1 } } };
    expect(problems([layer])).toEqual([]);
    expect(problems([allowIn('userData', ['constructor'])])[0]?.message).toBe("'constructor' is no key or section of the configuration");
  });

  it('a section given a scalar counts as setting its keys', () => {
    expect(problems([layerSetting('user-data', 'ssh', 'oops')]).map((p) => p.path)).toEqual(['ssh']);
    expect(problems([layerSetting('user-data', 'log', 'oops')])).toEqual([]);
  });
});

describe('resolveConfig refuses untrusted keys: exit 2, one line naming key, source and what to do', () => {
  const file = parseYamlLayer('file', LOCAL, "cluster: { name: prod }\nnode: { role: bastion }\nssh: { iamGroup: admins }\n");
  const errorOf = (layers: Layer[], localFile?: string) => {
    try {
      resolveConfig(layers, localFile ? { localFile } : {});
    } catch (err) {
      if (err instanceof ConfigInvalid) return err;
      throw err;
    }
    throw new Error('expected ConfigUntrusted');
  };

  it('a tag naming the IAM group', () => {
    const e = errorOf([file, tagsLayer({ 'zdt:ssh-iam-group': 'everyone' }) as Layer]);
    expect([e.code, e.exitCode]).toEqual(['ConfigUntrusted', 2]);
    expect(e.oneLine()).toBe(
      'ConfigUntrusted: ssh.iamGroup: instance tags (zdt:ssh-iam-group) may not set it: it decides who may log in; ' +
        `set it in ${LOCAL} or with --config, or allow it there with trust: { tags: [ssh.iamGroup] } (docs/config.md, "Trust")`,
    );
  });

  it('user-data moving IMDS, named under --root', () => {
    const ud = parseYamlLayer('user-data', 'user-data (zdt-agent part)', "aws: { imdsEndpoint: 'http://203.0.113.9' }\n");
    const e = errorOf([file, ud], '/tmp/r/etc/zdt-agent/config.yaml');
    expect(e.oneLine()).toBe(
      'ConfigUntrusted: aws.imdsEndpoint: user-data (zdt-agent part) may not set it: it decides how IMDS is reached, and what other sources may decide; ' +
        'set it in /tmp/r/etc/zdt-agent/config.yaml or with --config (docs/config.md, "Trust")',
    );
  });

  it('counts the other problems, schema ones included', () => {
    const ud = parseYamlLayer('user-data', 'user-data (zdt-agent part)', 'etcd: { backup: { bucket: elsewhere } }\nterminate: { budget: -1 }\n');
    const e = errorOf([file, ud]);
    expect(e.message).toMatch(/^etcd\.backup\.bucket: user-data \(zdt-agent part\) may not set it: it decides where credentials, data or backups go \(\d+ more: run 'zdt-agent config validate'\)$/);
    expect(e.problems.map((p) => p.path)).toEqual(expect.arrayContaining(['etcd.backup.bucket', 'terminate.budget']));
  });

  it('allowed in the AMI file, user-data sets the bucket', () => {
    const ami = parseYamlLayer('file', LOCAL, "cluster: { name: prod }\nnode: { role: controller, controllerIndex: '00' }\ntrust: { userData: [etcd.backup] }\n");
    const ud = parseYamlLayer('user-data', 'user-data (zdt-agent part)', 'etcd: { backup: { bucket: prod-backups, prefix: p } }\n');
    expect(resolveConfig([ami, ud]).etcd?.backup).toMatchObject({ bucket: 'prod-backups', prefix: 'p' });
  });
});
