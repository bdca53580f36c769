import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { BootContext, BootPhase, PhaseOutcome } from '../../agent/boot/context.js';
import { bootPhaseOrder, type BootPhaseName } from '../../agent/boot/plan.js';
import { runBoot } from '../../agent/boot/run.js';
import { resolveConfig } from '../../agent/config/load.js';
import { AgentError } from '../../agent/errors.js';
import { writeFileAtomic } from '../../agent/host/atomic.js';
import type { Aws } from '../../agent/host/aws.js';
import type { Exec } from '../../agent/host/exec.js';
import type { Imds } from '../../agent/host/imds.js';
import { makePaths } from '../../agent/host/paths.js';
import { createLogger } from '../../agent/log/logger.js';

/**
 * Full disks, on a real small filesystem: a tmpfs with a size limit mounted under the test's
 * root (unmounted by its mount point in afterEach).
 */

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0).reverse()) c();
});

/** A directory on a tmpfs of `kib` KiB, filled to the last block when `fill` is set. */
function smallFilesystem(kib: number, fill: boolean): { root: string; dir: string } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-full-'));
  const dir = path.join(root, 'var/lib/zdt-agent');
  fs.mkdirSync(dir, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${kib}k,mode=0755`, 'zdt-test-full', dir]);
  cleanups.push(() => {
    execFileSync('umount', [dir]);
    fs.rmSync(root, { recursive: true, force: true });
  });
  if (fill) {
    try {
      fs.writeFileSync(path.join(dir, 'filler'), Buffer.alloc(kib * 1024));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
    }
  }
  return { root, dir };
}

const tempFiles = (dir: string) => fs.readdirSync(dir).filter((n) => n.endsWith('.tmp'));

describe('writeFileAtomic on a full disk', () => {
  it('removes its temp file when the write fails, and names the file in the error', () => {
    const { dir } = smallFilesystem(64, true);
    const file = path.join(dir, 'state.json');
    let err: unknown;
    try {
      writeFileAtomic(file, 'x'.repeat(32 * 1024));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AgentError);
    expect((err as AgentError).oneLine()).toBe(
      `FileWriteFailed: cannot write ${file}: ENOSPC: no space left on device, write; the filesystem holding ${dir} is full; free space there`,
    );
    expect(tempFiles(dir)).toEqual([]);
    expect(fs.existsSync(file)).toBe(false);
  });

  it("removes temp files a killed writer left for the same target, not a live writer's or another file's", () => {
    const { dir } = smallFilesystem(256, false);
    const file = path.join(dir, 'state.json');
    const dead = execFileSync('sh', ['-c', 'echo $$'], { encoding: 'utf8' }).trim();
    const now = Date.now();
    const stale = [`.state.json.${dead}.${now - 1000}.tmp`, `.state.json.${process.pid}.${now - 5000}.tmp`];
    const kept = [`.state.json.1.${now}.tmp`, `.other.json.${dead}.${now}.tmp`, '.state.json.not-ours.tmp'];
    for (const n of [...stale, ...kept]) fs.writeFileSync(path.join(dir, n), 'half');
    writeFileAtomic(file, '{}\n');
    expect(fs.readFileSync(file, 'utf8')).toBe('{}\n');
    expect(tempFiles(dir).sort()).toEqual([...kept].sort());
  });
});

describe('a boot that cannot record its state', () => {
  const identityImds = {
    identityDocument: async () => ({ instanceId: 'i-0abc', region: 'eu-central-1', availabilityZone: 'eu-central-1a', instanceType: 'm5.large', privateIp: '10.0.0.5' }),
    optional: async () => undefined,
    tags: async () => ({ 'aws:cloudformation:stack-name': 'prod', 'aws:cloudformation:logical-id': 'Workers' }),
  } as unknown as Imds;

  function stubPhases(ran: string[], seen: Array<BootContext['failure']>): Record<Exclude<BootPhaseName, 'identity'>, BootPhase> {
    const out = {} as Record<Exclude<BootPhaseName, 'identity'>, BootPhase>;
    for (const { name } of bootPhaseOrder) {
      if (name === 'identity') continue;
      out[name] = {
        name,
        budgetMs: () => 5000,
        run: async (ctx): Promise<PhaseOutcome> => {
          ran.push(name);
          seen.push(ctx.failure);
          return { detail: `${name} did it`, changed: true };
        },
      };
    }
    return out;
  }

  it('does no work, still signals and notifies the failure, and fails naming the state file', async () => {
    const { root, dir } = smallFilesystem(64, true);
    const ran: string[] = [];
    const seen: Array<BootContext['failure']> = [];
    const r = await runBoot(
      {
        config: resolveConfig([{ source: 'file', origin: 'test', data: { cluster: { name: 'prod', apiEndpoint: 'k8s:6443' }, node: { role: 'worker' }, notify: { snsTopicArn: 'arn:aws:sns:eu-central-1:1:t' } } }]),
        paths: makePaths(root),
        log: createLogger({ console: null }),
        imds: identityImds,
        aws: {} as Aws,
        exec: (async () => {
          throw new Error('no exec');
        }) as Exec,
      },
      stubPhases(ran, seen),
    );
    expect(r.ok).toBe(false);
    expect(r.error?.exitCode).toBe(1);
    expect(r.error?.oneLine()).toMatch(
      new RegExp(`^StateNotRecorded: the boot cannot record its state: cannot write ${dir}/state\\.json: ENOSPC: no space left on device, write; the filesystem holding ${dir} is full`),
    );
    expect(ran).toEqual(['signal', 'notify']);
    expect(seen.map((f) => f?.error)).toEqual([r.error?.oneLine(), r.error?.oneLine()]);
    expect(tempFiles(dir)).toEqual([]);
  });
});
