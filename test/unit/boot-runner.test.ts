import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { BootContext, BootPhase, PhaseOutcome } from '../../agent/boot/context.js';
import { bootPhaseOrder, type BootPhaseName } from '../../agent/boot/plan.js';
import { runBoot, type BootDeps } from '../../agent/boot/run.js';
import { resolveConfig } from '../../agent/config/load.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import { AgentError, DeadlineError, ExitCode } from '../../agent/errors.js';
import type { Aws } from '../../agent/host/aws.js';
import type { Exec } from '../../agent/host/exec.js';
import type { Imds } from '../../agent/host/imds.js';
import { makePaths } from '../../agent/host/paths.js';
import { createLogger } from '../../agent/log/logger.js';
import { readState } from '../../agent/log/state.js';

/** The boot runner with stand-in phases: order, decisions, failure handling, budgets, state, lock. */

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** IMDS as readIdentity sees it. */
const fakeImds = (instanceType = 'm5.large') =>
  ({
    identityDocument: async () => ({ instanceId: 'i-0abc', region: 'eu-central-1', availabilityZone: 'eu-central-1a', instanceType, privateIp: '10.0.0.5' }),
    optional: async () => undefined,
    tags: async () => ({ 'aws:cloudformation:stack-name': 'prod', 'aws:cloudformation:logical-id': 'Workers' }),
  }) as unknown as Imds;

function deps(input: ConfigInput, instanceType?: string): BootDeps {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-runner-'));
  dirs.push(root);
  return {
    config: resolveConfig([{ source: 'file', origin: 'test', data: input as Record<string, unknown> }]),
    paths: makePaths(root),
    log: createLogger({ console: null }),
    imds: fakeImds(instanceType),
    aws: {} as Aws,
    exec: (async () => {
      throw new Error('no exec in this test');
    }) as Exec,
  };
}

const worker: ConfigInput = { cluster: { name: 'prod', apiEndpoint: 'k8s:6443' }, node: { role: 'worker' }, notify: { snsTopicArn: 'arn:aws:sns:eu-central-1:1:t' } };

type Phases = Record<Exclude<BootPhaseName, 'identity'>, BootPhase>;

/** Every phase records that it ran and returns `outcome` unless overridden. */
function phases(overrides: Partial<Record<BootPhaseName, (ctx: BootContext) => Promise<PhaseOutcome>>> = {}, ran: string[] = [], budgetMs = 5000): Phases {
  const out = {} as Phases;
  for (const { name } of bootPhaseOrder) {
    if (name === 'identity') continue;
    out[name] = {
      name,
      budgetMs: () => budgetMs,
      run: async (ctx) => {
        ran.push(name);
        return overrides[name] ? overrides[name]!(ctx) : { detail: `${name} did it`, changed: true };
      },
    };
  }
  return out;
}

describe('boot runner', () => {
  it('runs the phases that apply in the plan order, records the others as skipped with the reason', async () => {
    const ran: string[] = [];
    const d = deps(worker);
    const r = await runBoot(d, phases({}, ran));
    expect(r.ok).toBe(true);
    expect(ran).toEqual(['kube-version', 'worker-join', 'signal', 'notify']);
    expect(Object.keys(r.phases)).toEqual(bootPhaseOrder.map((p) => p.name));
    expect(r.phases.neuron).toMatchObject({ result: 'skipped', detail: 'm5.large has no Neuron devices' });
    expect(r.phases['etcd-volume']).toMatchObject({ result: 'skipped', detail: 'workers hold no etcd data' });
    expect(r.phases.identity!.detail).toBe('i-0abc m5.large in eu-central-1a, worker of prod, stack prod/Workers');
    const state = readState(d.paths.stateFile, 'x');
    expect(state.boot).toMatchObject({ result: 'ok', finishedAt: expect.any(String) });
    expect(fs.existsSync(d.paths.at('/run/zdt-agent/boot.lock'))).toBe(false);
  });

  it('after a failure runs no further work phase, but still signals and notifies with the failure', async () => {
    const ran: string[] = [];
    const seen: Array<BootContext['failure']> = [];
    const report = async (ctx: BootContext) => {
      seen.push(ctx.failure);
      return { detail: 'reported', changed: true };
    };
    const r = await runBoot(
      deps(worker),
      phases(
        {
          'kube-version': async () => {
            throw new AgentError('KubernetesVersionNotOffered', 'no 1.34', { hint: 'add the repo' });
          },
          signal: report,
          notify: report,
        },
        ran,
      ),
    );
    expect(r.ok).toBe(false);
    expect(r.failedPhase).toBe('kube-version');
    expect(r.error?.code).toBe('KubernetesVersionNotOffered');
    expect(ran).toEqual(['kube-version', 'signal', 'notify']);
    expect(r.phases['worker-join']).toMatchObject({ result: 'skipped', detail: 'not run: kube-version failed' });
    expect(r.phases['kube-version']).toMatchObject({ result: 'failed', error: 'KubernetesVersionNotOffered: no 1.34; add the repo' });
    expect(seen).toEqual([
      { phase: 'kube-version', error: 'KubernetesVersionNotOffered: no 1.34; add the repo' },
      { phase: 'kube-version', error: 'KubernetesVersionNotOffered: no 1.34; add the repo' },
    ]);
  });

  it('ends a phase that outruns its budget with a deadline, and aborts its signal', async () => {
    let aborted = false;
    const r = await runBoot(
      deps(worker),
      phases(
        {
          'kube-version': (ctx) =>
            new Promise((_, reject) => {
              ctx.signal.addEventListener('abort', () => {
                aborted = true;
                reject(ctx.signal.reason);
              });
            }),
        },
        [],
        300,
      ),
    );
    expect(r.ok).toBe(false);
    expect(r.error).toBeInstanceOf(DeadlineError);
    expect(r.error?.exitCode).toBe(ExitCode.deadline);
    expect(r.phases['kube-version']!.result).toBe('deadline');
    expect(r.error?.message).toBe('kube-version did not finish within its budget of 300 ms');
    expect(aborted).toBe(true);
  });

  it('writes each phase that ran to the state file as soon as it ends', async () => {
    const d = deps(worker);
    let during: string[] = [];
    await runBoot(
      d,
      phases({
        'worker-join': async () => {
          during = Object.keys(readState(d.paths.stateFile, 'x').boot!.phases);
          return { detail: 'joined', changed: true };
        },
      }),
    );
    // Skipped phases are written along with the next phase that runs.
    expect(during).toEqual(['identity', 'neuron', 'etcd-volume', 'etcd-restore', 'kube-version']);
  });

  it('sends no notification when nothing changed (a re-run on a booted node)', async () => {
    const ran: string[] = [];
    const noop = async () => ({ detail: 'already', changed: false });
    const r = await runBoot(deps(worker), phases({ 'kube-version': noop, 'worker-join': noop, signal: noop }, ran));
    expect(r.ok).toBe(true);
    expect(r.changed).toBe(false);
    expect(ran).not.toContain('notify');
    expect(r.phases.notify).toMatchObject({ result: 'skipped', detail: 'nothing changed on this run' });
  });

  it('refuses to run next to another boot, and takes over the lock of one that died', async () => {
    const d = deps(worker);
    const lock = d.paths.at('/run/zdt-agent/boot.lock');
    fs.mkdirSync(path.dirname(lock), { recursive: true });
    // A live process (this test's parent) holds it.
    fs.writeFileSync(lock, `${process.ppid}\n`);
    await expect(runBoot(d, phases())).rejects.toMatchObject({ code: 'BootRunning' });
    // A PID that no longer runs: taken over.
    fs.writeFileSync(lock, '999999999\n');
    expect((await runBoot(d, phases())).ok).toBe(true);
    expect(fs.existsSync(lock)).toBe(false);
  });
});
