import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { BootPhase } from '../../agent/boot/context.js';
import {
  answerFromState,
  bootCompletion,
  checkCompleted,
  COMPLETION_FACTS,
  parseBootArgv,
  readLocalSources,
  sourcesDigest,
} from '../../agent/boot/fast-path.js';
import { bootPhaseOrder, type BootPhaseName } from '../../agent/boot/plan.js';
import { runBoot } from '../../agent/boot/run.js';
import { saveInstanceSources, type InstanceSources } from '../../agent/config/instance.js';
import { readFileLayer, resolveConfig } from '../../agent/config/load.js';
import type { Aws } from '../../agent/host/aws.js';
import type { Exec } from '../../agent/host/exec.js';
import type { Imds } from '../../agent/host/imds.js';
import { instanceCacheFile, makePaths, type Paths } from '../../agent/host/paths.js';
import { createLogger } from '../../agent/log/logger.js';
import { readState, writeState } from '../../agent/log/state.js';
import { agentVersion } from '../../agent/version.js';

/**
 * The fast path of a second `boot` in the same kernel boot: what a completed boot records,
 * and everything that sends the next boot through the full run instead.
 */

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const BOOT_ID = '6c0e2b4e-3f1a-4c55-9d0e-2f7a1b9c8d01';
const CONFIG = 'node: { role: nat }\nlog: { format: json }\n';
const INSTANCE: InstanceSources = { userData: 'cluster: { name: prod }\n', tags: { Name: 'nat-a', 'zdt:role': 'nat' }, fetchedAt: '2030-01-01T00:00:00.000Z' };

/** A node root with a kernel boot id, a config file and cached instance sources. */
function node(): Paths {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-fast-'));
  dirs.push(root);
  const paths = makePaths(root);
  setBootId(paths, BOOT_ID);
  fs.mkdirSync(path.dirname(paths.configFile), { recursive: true });
  fs.writeFileSync(paths.configFile, CONFIG);
  saveInstanceSources(instanceCacheFile(paths), INSTANCE);
  return paths;
}

function setBootId(paths: Paths, id: string): void {
  fs.mkdirSync(paths.at('/proc/sys/kernel/random'), { recursive: true });
  fs.writeFileSync(paths.at('/proc/sys/kernel/random/boot_id'), `${id}\n`);
}

/** IMDS as the identity phase reads it; `down` fails the boot in its first phase. */
const fakeImds = (down = false) =>
  ({
    identityDocument: async () => {
      if (down) throw new Error('IMDS does not answer');
      return { instanceId: 'i-0abc', region: 'eu-central-1', availabilityZone: 'eu-central-1a', instanceType: 'm5.large', privateIp: '10.0.0.5' };
    },
    optional: async () => undefined,
    tags: async () => ({}),
  }) as unknown as Imds;

/** A full boot of the node as `commands/boot.ts` runs it, with stand-in phases. */
async function fullBoot(paths: Paths, o: { fail?: boolean; configArg?: string } = {}) {
  const local = readLocalSources(paths, o.configArg);
  const layers = [readFileLayer('file', paths.configFile, false)!, ...(o.configArg ? [readFileLayer('--config', o.configArg, true)!] : [])];
  const config = resolveConfig(layers);
  const phases = {} as Record<Exclude<BootPhaseName, 'identity'>, BootPhase>;
  for (const { name } of bootPhaseOrder) {
    if (name === 'identity') continue;
    phases[name] = {
      name,
      budgetMs: () => 5000,
      run: async () => ({ detail: 'ok', changed: false }),
    };
  }
  return runBoot(
    {
      config,
      paths,
      log: createLogger({ console: null }),
      imds: fakeImds(o.fail),
      aws: {} as Aws,
      exec: (async () => ({ exitCode: 0, stdout: '', stderr: '', durationMs: 0 })) as Exec,
      completion: bootCompletion(paths, local!, INSTANCE, config.log),
    },
    phases,
  );
}

const verdict = (paths: Paths, configArg?: string) => checkCompleted(paths, { root: paths.root, config: configArg });

describe('boot fast path: arguments', () => {
  it('takes boot with --root, --config, --log-format and --log-level, in both spellings', () => {
    expect(parseBootArgv([])).toEqual({});
    expect(parseBootArgv(['--root', '/r', '--config=/c.yaml', '--log-format', 'json', '--log-level=debug'])).toEqual({
      root: '/r',
      config: '/c.yaml',
      logFormat: 'json',
      logLevel: 'debug',
    });
  });

  it('leaves everything else to the full CLI: --force, --help, unknown flags, arguments, bad values', () => {
    for (const argv of [['--force'], ['--root', '/r', '--force'], ['--help'], ['--dry-run'], ['extra'], ['--root'], ['--root', '--config', 'x'], ['--log-level', 'loud'], ['--log-format=xml']]) {
      expect(parseBootArgv(argv), argv.join(' ')).toBeUndefined();
    }
  });
});

describe('boot fast path', () => {
  it('a second boot in the same kernel boot with unchanged config exits 0 with one log line, in the configured format', async () => {
    const paths = node();
    const first = await fullBoot(paths);
    expect(first.ok).toBe(true);
    expect(readState(paths.stateFile, agentVersion).facts).toMatchObject({ [COMPLETION_FACTS.bootId]: BOOT_ID, [COMPLETION_FACTS.log]: 'json/info' });

    expect(answerFromState({ root: paths.root }, null)).toBe(0);

    const lines = fs.readFileSync(paths.logFile, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(1);
    const line = JSON.parse(lines[0]!) as { level: string; msg: string };
    expect(line.level).toBe('info');
    expect(line.msg).toBe(`boot already completed in this boot at ${first.state.boot!.finishedAt}; nothing to do; use --force to re-check`);
  });

  it('after a reboot (another kernel boot id) the boot runs in full', async () => {
    const paths = node();
    await fullBoot(paths);
    setBootId(paths, '0f5a9e12-0000-4000-8000-000000000000');

    expect(verdict(paths)).toEqual({ fullBoot: 'the last boot completed in another kernel boot' });
    expect(answerFromState({ root: paths.root }, null)).toBeUndefined();
  });

  it('a changed config file, a --config file or changed instance sources send the boot through the full run', async () => {
    const paths = node();
    await fullBoot(paths);
    expect(verdict(paths)).toHaveProperty('completedAt');

    fs.writeFileSync(paths.configFile, `${CONFIG}# edited\n`);
    expect(verdict(paths)).toEqual({ fullBoot: 'the config sources changed' });
    fs.writeFileSync(paths.configFile, CONFIG);
    expect(verdict(paths)).toHaveProperty('completedAt');

    const extra = path.join(paths.root, 'extra.yaml');
    fs.writeFileSync(extra, 'log: { level: debug }\n');
    expect(verdict(paths, extra)).toEqual({ fullBoot: 'the config sources changed' });
    expect(verdict(paths, path.join(paths.root, 'missing.yaml'))).toEqual({ fullBoot: 'the config sources changed' });

    saveInstanceSources(instanceCacheFile(paths), { ...INSTANCE, tags: { ...INSTANCE.tags, 'zdt:role': 'bastion' } });
    expect(verdict(paths)).toEqual({ fullBoot: 'the config sources changed' });
  });

  it('a boot with --config is answered again only with the same --config file', async () => {
    const paths = node();
    const extra = path.join(paths.root, 'extra.yaml');
    fs.writeFileSync(extra, 'log: { level: warn }\n');
    await fullBoot(paths, { configArg: extra });

    expect(verdict(paths, extra)).toMatchObject({ log: { format: 'json', level: 'warn' } });
    expect(verdict(paths)).toEqual({ fullBoot: 'the config sources changed' });
  });

  it('a failed boot records no completion and forgets the last one', async () => {
    const paths = node();
    await fullBoot(paths);
    const failed = await fullBoot(paths, { fail: true });

    expect(failed.ok).toBe(false);
    expect(Object.keys(readState(paths.stateFile, agentVersion).facts)).not.toContain(COMPLETION_FACTS.bootId);
    expect(verdict(paths)).toEqual({ fullBoot: 'the last boot did not complete' });
  });

  it('a boot still running or interrupted, another agent version, or a terminate since: full run', async () => {
    const paths = node();
    await fullBoot(paths);
    const state = readState(paths.stateFile, agentVersion);

    writeState(paths.stateFile, { ...state, boot: { ...state.boot!, result: undefined, finishedAt: undefined } });
    expect(verdict(paths)).toEqual({ fullBoot: 'the last boot did not complete' });

    writeState(paths.stateFile, { ...state, agentVersion: '0.0.1-older' });
    expect(verdict(paths)).toEqual({ fullBoot: 'the last boot ran agent 0.0.1-older' });

    writeState(paths.stateFile, { ...state, terminate: { startedAt: new Date(Date.now() + 1000).toISOString(), phases: {} } });
    expect(verdict(paths)).toEqual({ fullBoot: 'terminate ran since' });

    fs.rmSync(paths.stateFile);
    expect(verdict(paths)).toEqual({ fullBoot: 'no state file' });
  });

  it('without a kernel boot id (a root without /proc) nothing is recorded and every boot runs in full', async () => {
    const paths = node();
    fs.rmSync(paths.at('/proc'), { recursive: true });
    await fullBoot(paths);

    expect(Object.keys(readState(paths.stateFile, agentVersion).facts)).not.toContain(COMPLETION_FACTS.bootId);
    expect(verdict(paths)).toEqual({ fullBoot: 'the last boot completed in another kernel boot' });
  });

  it('the digest of the sources ignores when IMDS was read and the order of the tags', () => {
    const local = { file: Buffer.from(CONFIG), config: undefined };
    const a = sourcesDigest(local, { userData: INSTANCE.userData, tags: { a: '1', b: '2' } });
    expect(sourcesDigest(local, { userData: INSTANCE.userData, tags: { b: '2', a: '1' } })).toBe(a);
    expect(sourcesDigest(local, { userData: INSTANCE.userData, tags: { a: '1', b: '3' } })).not.toBe(a);
    expect(sourcesDigest(local, { userData: undefined, tags: { a: '1', b: '2' } })).not.toBe(a);
    expect(sourcesDigest({ file: undefined, config: undefined }, undefined)).not.toBe(sourcesDigest({ file: Buffer.from(''), config: undefined }, undefined));
  });
});
