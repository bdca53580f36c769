import fs from 'node:fs';
import path from 'node:path';
import { ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { afterAll, afterEach, expect, it } from 'vitest';
import { readState, type RunRecord } from '../../agent/log/state.js';
import type { AgentEvent } from '../../agent/notify/events.js';
import type { FidelityProxy } from '../testbed/fidelity-proxy.js';
import { ROOT_DIR, runAgent, type AgentRun } from '../support/boot-env.js';

/**
 * The fault-injection suite's scenarios: each one names the fault, states what the agent
 * must do about it, runs the agent (the bundle of agent/main.ts, as a process: exit code,
 * stdout, stderr and the state file are what an operator sees), checks the expectation and
 * adds a row to the file's table: scenario, expected, observed, seconds. The table is printed
 * when the file ends and written to .cache/fault-suite/<file>.md.
 *
 * Times are never asserted tightly: every run has a generous "does not hang" limit, after
 * which it is killed and the scenario fails.
 */

interface Row {
  scenario: string;
  expected: string;
  observed: string;
  seconds: number;
  passed: boolean;
}

export interface Observer {
  /** What happened, in the words of the table (several calls are joined with '; '). */
  observe(text: string): void;
}

export function faultTable(file: string): (name: string, expected: string, fn: (o: Observer) => Promise<void>, timeoutMs?: number) => void {
  const rows: Row[] = [];
  afterAll(() => {
    if (rows.length === 0) return;
    const text = renderTable(file, rows);
    process.stdout.write(`\n${text}\n`);
    const out = path.join(ROOT_DIR, '.cache/fault-suite', `${file}.md`);
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, `${text}\n`);
  });
  return (name, expected, fn, timeoutMs = 120_000) => {
    it(`${name} -> ${expected}`, async () => {
      const observed: string[] = [];
      const t0 = performance.now();
      let passed = false;
      try {
        await fn({ observe: (text) => void observed.push(text) });
        passed = true;
      } catch (err) {
        observed.push(`FAILED: ${((err as Error).message ?? String(err)).split('\n')[0]}`);
        throw err;
      } finally {
        rows.push({ scenario: name, expected, observed: observed.join('; '), seconds: (performance.now() - t0) / 1000, passed });
      }
    }, timeoutMs);
  };
}

function renderTable(file: string, rows: Row[]): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
  const lines = [
    `### fault suite: ${file} (${rows.filter((r) => r.passed).length}/${rows.length} as expected)`,
    '',
    '| scenario | expected | observed | s |',
    '|---|---|---|---:|',
    ...rows.map((r) => `| ${cell(r.scenario)} | ${cell(r.expected)} | ${r.passed ? '' : '**not as expected** '}${cell(r.observed)} | ${r.seconds.toFixed(1)} |`),
  ];
  return lines.join('\n');
}

/** One agent process and what it left: its exit, output, and its state file's run record. */
export interface Outcome extends AgentRun {
  /** The boot or terminate record of the state file (undefined when it wrote none). */
  record: RunRecord | undefined;
  /** `exit 3; identity=ok kube-version=deadline` (phases that were skipped left out). */
  summary: string;
}

/**
 * Runs the agent with `args` (which include `--root` or the env names ZDT_ROOT) and reads what
 * it left. `limitMs` is the "does not hang" limit: the process is killed past it, and the
 * scenario fails.
 */
export async function runScenarioAgent(
  o: { root: string; args: string[]; env: NodeJS.ProcessEnv; record?: 'boot' | 'terminate' | undefined; limitMs?: number },
): Promise<Outcome> {
  const limitMs = o.limitMs ?? 90_000;
  const run = await runAgent(o.args, o.env, limitMs);
  const stateFile = path.join(o.root, 'var/lib/zdt-agent/state.json');
  const record = o.record && fs.existsSync(stateFile) ? readState(stateFile, 'test')[o.record] : undefined;
  const phases = Object.entries(record?.phases ?? {})
    .filter(([, p]) => p.result !== 'skipped')
    .map(([n, p]) => `${n}=${p.result}`)
    .join(' ');
  const summary = `exit ${run.code ?? run.signal}${o.record ? `; ${record ? phases || 'no phase ran' : 'no state file'}` : ''}`;
  expect(run.signal, `killed after the ${limitMs} ms "does not hang" limit:\n${run.stderr.slice(-3000)}`).toBeNull();
  expectNoCrash(run);
  return { ...run, record, summary };
}

/** No stack trace and no Node warning on either stream; a failure ends with one `zdt-agent:` line. */
export function expectNoCrash(run: AgentRun): void {
  const both = `${run.stdout}\n${run.stderr}`;
  expect(both, 'a stack trace').not.toMatch(/^\s+at .+[:(]\d+:\d+\)?$/m);
  expect(both, 'a Node warning').not.toMatch(/\(node:\d+\) \w*Warning/);
}

/** The one line a failed command printed for the operator (`zdt-agent: Code: …`). */
export function errorLine(run: AgentRun): string | undefined {
  return run.stderr
    .split('\n')
    .filter((l) => l.startsWith('zdt-agent: '))
    .at(-1);
}

/** Files a failed atomic write may have left (writeFileAtomic's `.<name>.<pid>.<ms>.tmp`) below `dir`. */
export function strayTempFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      if (e.isDirectory() && !e.isSymbolicLink()) walk(p);
      else if (/^\..+\.\d+\.\d+\.tmp$/.test(e.name)) out.push(p);
    }
  };
  walk(dir);
  return out;
}

export interface ScenarioUndo {
  /** Runs `fn` after the scenario (newest first): servers, roots, mounts it started. */
  later(fn: () => Promise<void> | void): void;
  /** SIGSTOPs a server (accepts connections, never answers); it is continued after the scenario. */
  sigstop(pid: number): void;
  isStopped(pid: number): boolean;
}

/**
 * Undoes what each scenario did, after it: the proxy's faults cleared, stopped servers
 * continued, then `later` steps newest first. Call once per file, at the top level.
 */
export function undoAfterEachScenario(proxy: () => FidelityProxy | undefined): ScenarioUndo {
  const steps: Array<() => Promise<void> | void> = [];
  const stopped: number[] = [];
  afterEach(async () => {
    proxy()?.clearFaults();
    for (const pid of stopped.splice(0)) process.kill(pid, 'SIGCONT');
    for (const step of steps.splice(0).reverse()) await step();
  });
  return {
    later: (fn) => void steps.push(fn),
    sigstop: (pid) => {
      process.kill(pid, 'SIGSTOP');
      stopped.push(pid);
    },
    isStopped: (pid) => stopped.includes(pid),
  };
}

/** The SNS events the agent sent through the proxy since its `since`th Publish call (calls a fault answered did not reach SNS). */
export function snsEvents(proxy: FidelityProxy, since = 0): AgentEvent[] {
  return proxy
    .seen('Publish')
    .slice(since)
    .filter((c) => c.fault === undefined || c.fault === 'latency')
    .map((c) => JSON.parse(c.params.Message ?? '{}') as AgentEvent);
}

/** Keys of the objects under `prefix`, and of the multipart uploads under it that were neither completed nor aborted. */
export async function s3Leftovers(s3: S3Client, bucket: string, prefix: string): Promise<{ objects: string[]; openUploads: string[] }> {
  const [objects, uploads] = await Promise.all([
    s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix })),
    s3.send(new ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix })),
  ]);
  return { objects: (objects.Contents ?? []).map((c) => c.Key!), openUploads: (uploads.Uploads ?? []).map((u) => u.Key!) };
}
