import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { ConfigInvalid, parseYamlLayer, resolveConfig, tagsLayer, type Layer } from '../../agent/config/load.js';
import { extractAgentPart } from '../../agent/config/userdata.js';
import { ConfigError } from '../../agent/errors.js';

const yaml = (origin: string, text: string, source: Layer['source'] = 'file') => parseYamlLayer(source, origin, text);

function problemsOf(layers: Layer[]) {
  try {
    resolveConfig(layers);
  } catch (err) {
    if (err instanceof ConfigInvalid) return err.problems;
    throw err;
  }
  throw new Error('expected the config to be invalid');
}

describe('config precedence', () => {
  const file = yaml('/etc/zdt-agent/config.yaml', `
cluster: { name: site-default, kubernetesVersion: '1.30.2' }
node: { role: worker, labels: { team: a, zone: x } }
terminate: { budget: 100 }
`);
  const userData = yaml('user-data', `
cluster: { name: prod }
node: { labels: { zone: y } }
`, 'user-data');
  const tags = tagsLayer({ 'zdt:role': 'controller', 'zdt:controller-index': '01', 'Name': 'ignored' })!;
  const cli = yaml('/tmp/override.yaml', `terminate: { budget: 60, drainTimeout: 30 }`, '--config');

  it('merges defaults < file < user-data < tags < --config, key by key', () => {
    const c = resolveConfig([file, userData, tags, cli]);
    expect(c.cluster?.name).toBe('prod'); // user-data over file
    expect(c.cluster?.kubernetesVersion).toBe('1.30.2'); // file kept where nobody overrides
    expect(c.node.role).toBe('controller'); // tag over both
    expect(c.node.controllerIndex).toBe('01');
    expect(c.node.labels).toEqual({ team: 'a', zone: 'y' }); // mappings merge
    expect(c.terminate.budget).toBe(60); // --config wins
    expect(c.terminate.hookTimeout).toBe(20); // default
  });

  it('only the documented zdt: tags configure the agent', () => {
    expect(tagsLayer({ Name: 'x', 'zdt:unknown': 'y' })).toBeUndefined();
    // Tag keys named like Object's own properties are tags like any other (anyone may write them).
    expect(tagsLayer({ constructor: 'x', toString: 'y', __proto__: 'z' } as Record<string, string>)).toBeUndefined();
    expect(tagsLayer({ 'zdt:cluster': 'c1' })?.data).toEqual({ cluster: { name: 'c1' } });
  });

  it('lists replace, not append', () => {
    const a = yaml('a', `cluster: {name: p}\nnode: { role: worker, taints: [{key: a, effect: NoSchedule}] }`);
    const b = yaml('b', `node: { taints: [{key: b, effect: NoExecute}] }`);
    expect(resolveConfig([a, b]).node.taints).toEqual([{ key: 'b', effect: 'NoExecute' }]);
  });
});

describe("keys named like Object's own properties", () => {
  it('are unknown keys with the usual hint', () => {
    const problems = problemsOf([yaml('/etc/zdt-agent/config.yaml', 'cluster: { name: p }\nconstructor: 1\ntoString: 2\n')]);
    expect(problems.map((p) => [p.path, p.hint])).toEqual([
      ['constructor', 'remove it or check its spelling; the keys of the top level are listed in docs/config.md'],
      ['toString', 'remove it or check its spelling; the keys of the top level are listed in docs/config.md'],
    ]);
  });
});

describe('a __proto__ key', () => {
  it.each(['__proto__: { polluted: yes }\n', 'node: { role: worker, labels: { __proto__: { polluted: yes } } }\n'])('is refused, and pollutes nothing: %j', (text) => {
    let err: unknown;
    try {
      resolveConfig([yaml('/etc/zdt-agent/config.yaml', 'cluster: { name: p }\n'), yaml('user-data', text, 'user-data')]);
    } catch (e) {
      err = e;
    }
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).oneLine()).toMatch(/^ConfigSyntax: user-data: the key (node\.labels\.)?__proto__ is not allowed; /);
  });
});

describe('config validation', () => {
  it('reports every problem with its path, its source and a hint', () => {
    const problems = problemsOf([
      yaml('/etc/zdt-agent/config.yaml', `
cluster: { name: Prod_1 }
node: { role: worker, controllerIndex: 00 }
etcd: {}
terminate: { budget: 0, bogus: true }
`),
    ]);
    const byPath = Object.fromEntries(problems.map((p) => [p.path, p]));
    expect(Object.keys(byPath).sort()).toEqual(['cluster.name', 'etcd', 'node.controllerIndex', 'terminate.bogus', 'terminate.budget']);
    expect(byPath['node.controllerIndex']!.hint).toMatch(/quote it/);
    expect(byPath['terminate.bogus']!.message).toBe("unknown key 'bogus'");
    expect(byPath['etcd']!.message).toMatch(/only controllers hold etcd/);
    expect(byPath['terminate.budget']!.message).toMatch(/greater than 0/);
    for (const p of problems) {
      expect(p.origin).toBe('/etc/zdt-agent/config.yaml');
      expect(p.hint.length).toBeGreaterThan(10);
    }
  });

  it.each([
    ['a controller without a slot', `cluster: {name: p}\nnode: {role: controller}`, 'node.controllerIndex'],
    ['a bastion without ssh', `node: {role: bastion}`, 'ssh'],
    ['a worker without a cluster', `node: {role: worker}`, 'cluster'],
    ['shared ssh without a login', `node: {role: bastion}\nssh: {iamGroup: g, mode: shared}`, 'ssh.sharedUser'],
    ['externalId without a role', `node: {role: bastion}\nssh: {iamGroup: g, externalId: abc}`, 'ssh.externalId'],
    ['a drain longer than the budget', `cluster: {name: p}\nterminate: {budget: 60}`, 'terminate.drainTimeout'],
    ['a wrong Kubernetes version', `cluster: {name: p, kubernetesVersion: '1.31'}`, 'cluster.kubernetesVersion'],
    ['a wrong endpoint', `cluster: {name: p}\naws: {endpoint: 'ftp://x'}`, 'aws.endpoint'],
    ['an unknown section', `cluster: {name: p}\nnodes: {}`, 'nodes'],
  ])('refuses %s', (_name, text, path) => {
    expect(problemsOf([yaml('f', text)]).map((p) => p.path)).toContain(path);
  });

  it('accepts a minimal worker and fills in the defaults', () => {
    const c = resolveConfig([yaml('f', `cluster: {name: prod}\nnode: {role: worker}`)]);
    expect(c.terminate).toMatchObject({ budget: 120, drainTimeout: 90, blockedPods: 'stop' });
    expect(c.aws.imdsEndpoint).toBe('http://169.254.169.254');
    expect(c.node.kubeletRootDir).toBe('/var/lib/containers');
  });

  it('gives one clear line for broken YAML, naming the file and line', () => {
    expect(() => yaml('/etc/zdt-agent/config.yaml', 'cluster:\n  name: [a\n')).toThrowError(ConfigError);
    try {
      yaml('/etc/zdt-agent/config.yaml', 'a: 1\ncluster: [\n');
    } catch (err) {
      expect((err as ConfigError).oneLine()).toMatch(/^ConfigSyntax: \/etc\/zdt-agent\/config.yaml line \d+: .*; fix the YAML syntax/);
      expect((err as ConfigError).oneLine()).not.toContain('\n');
    }
    expect(() => yaml('f', '- a\n- b\n')).toThrowError(/top level must be a mapping/);
    expect(() => yaml('f', 'a: 1\na: 2\n')).toThrowError(ConfigError);
  });

  it('turns an unknown YAML tag into the config error, without the value and without a Node warning', () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    try {
      const err = (() => {
        try {
          yaml('/etc/zdt-agent/config.yaml', 'cluster:\n  name: prod\n  token: !vault hunter2-secret-from-vault\n');
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(ConfigError);
      const line = (err as ConfigError).oneLine();
      expect(line).toMatch(/^ConfigSyntax: \/etc\/zdt-agent\/config.yaml line 3: Unresolved tag: !vault.*; the agent resolves no YAML tags/);
      expect(line).not.toContain('hunter2');
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).toEqual([]);
  });
});

describe('user-data', () => {
  const agentPart = '#zdt-agent\ncluster: { name: prod }\nnode: { role: worker }\n';
  const enc = (s: string) => new TextEncoder().encode(s);
  const mime = (parts: string[]) =>
    `Content-Type: multipart/mixed; boundary="==BOUNDARY=="\nMIME-Version: 1.0\n\n${parts.map((p) => `--==BOUNDARY==\n${p}\n`).join('')}--==BOUNDARY==--\n`;

  it('takes a whole document that starts with #zdt-agent', async () => {
    expect(await extractAgentPart(enc(agentPart))).toBe(agentPart);
  });

  it('finds the text/x-zdt-agent part of a cloud-init MIME document', async () => {
    const doc = mime([
      'Content-Type: text/cloud-config; charset="us-ascii"\nContent-Disposition: attachment; filename="cloud-config.txt"\n\n#cloud-config\nruncmd: [echo hi]\n',
      `Content-Type: text/x-zdt-agent; charset="us-ascii"\nContent-Transfer-Encoding: base64\n\n${Buffer.from(agentPart).toString('base64')}`,
      'Content-Type: text/x-shellscript\n\n#!/bin/sh\nzdt-agent boot\n',
    ]);
    expect((await extractAgentPart(enc(doc)))?.trim()).toBe(agentPart.trim());
  });

  it('finds a part by file name and reads gzip-compressed user-data', async () => {
    const doc = mime([`Content-Type: text/plain\nContent-Disposition: attachment; filename="zdt-agent.yaml"\n\ncluster: {name: prod}\n`]);
    expect(await extractAgentPart(gzipSync(enc(doc)))).toContain('cluster: {name: prod}');
  });

  it('ignores user-data without a zdt-agent part', async () => {
    expect(await extractAgentPart(enc('#!/bin/sh\necho hello\n'))).toBeUndefined();
    expect(await extractAgentPart(enc('#cloud-config\npackages: [jq]\n'))).toBeUndefined();
    expect(await extractAgentPart(undefined)).toBeUndefined();
  });

  it('refuses two zdt-agent parts and broken gzip with one clear line', async () => {
    const two = mime([`Content-Type: text/x-zdt-agent\n\n${agentPart}`, `Content-Type: text/x-zdt-agent\n\n${agentPart}`]);
    await expect(extractAgentPart(enc(two))).rejects.toThrowError(/2 zdt-agent parts/);
    await expect(extractAgentPart(new Uint8Array([0x1f, 0x8b, 1, 2, 3]))).rejects.toThrowError(/cannot be decompressed/);
  });
});

describe('config files', () => {
  it('a missing /etc file is no source; a missing --config file is an error', async () => {
    const { readFileLayer } = await import('../../agent/config/load.js');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-cfg-'));
    try {
      expect(readFileLayer('file', path.join(dir, 'none.yaml'), false)).toBeUndefined();
      expect(() => readFileLayer('--config', path.join(dir, 'none.yaml'), true)).toThrowError(/cannot read .*none.yaml: ENOENT/);
      fs.writeFileSync(path.join(dir, 'empty.yaml'), '');
      expect(readFileLayer('file', path.join(dir, 'empty.yaml'), false)?.data).toEqual({});
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
