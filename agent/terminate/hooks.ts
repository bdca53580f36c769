import fs from 'node:fs';
import path from 'node:path';
import type { Exec } from '../host/exec.js';
import type { Logger } from '../log/logger.js';
import { redact } from '../log/redact.js';

/**
 * Site hooks: the executables in `<hooksDir>/<event>.d/`, in lexical order, each with its
 * own timeout inside the step's window and ZDT_* variables in its environment. Their output
 * goes into the log. A failing or hanging hook is reported and the next one runs.
 */

export interface HookResult {
  name: string;
  result: 'ok' | 'failed' | 'timeout' | 'not-run';
  exitCode?: number | undefined;
  durationMs: number;
  error?: string | undefined;
}

export function hookFiles(dir: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries
    .filter((e) => {
      if (e.name.startsWith('.')) return false;
      const st = fs.statSync(path.join(dir, e.name), { throwIfNoEntry: false });
      return !!st?.isFile() && (st.mode & 0o111) !== 0;
    })
    .map((e) => e.name)
    .sort();
}

export async function runHooks(o: {
  /** Host path of `<hooksDir>/<event>.d`. */
  dir: string;
  env: Record<string, string>;
  hookTimeoutMs: number;
  /** Epoch ms by which every hook must be done. */
  deadline: number;
  exec: Exec;
  log: Logger;
}): Promise<HookResult[]> {
  const results: HookResult[] = [];
  for (const name of hookFiles(o.dir)) {
    const left = o.deadline - Date.now();
    if (left < 100) {
      results.push({ name, result: 'not-run', durationMs: 0, error: 'no time left in the budget' });
      continue;
    }
    const started = Date.now();
    const timeoutMs = Math.min(o.hookTimeoutMs, left);
    try {
      const r = await o.exec(path.join(o.dir, name), [], { timeoutMs, killGraceMs: 1000, env: o.env, cwd: o.dir, input: '' });
      logOutput(o.log, name, r.stdout, r.stderr);
      results.push({ name, result: 'ok', exitCode: 0, durationMs: Date.now() - started });
    } catch (err) {
      const e = err as Error & { code?: string };
      const timedOut = e.code === 'CommandTimedOut';
      o.log.warn(`hook ${name} ${timedOut ? 'timed out' : 'failed'}; going on`, { err: e.message });
      results.push({ name, result: timedOut ? 'timeout' : 'failed', durationMs: Date.now() - started, error: e.message });
    }
  }
  return results;
}

function logOutput(log: Logger, name: string, stdout: string, stderr: string): void {
  for (const [stream, text] of [['stdout', stdout], ['stderr', stderr]] as const) {
    for (const line of text.split('\n').slice(-50)) if (line.trim()) log.info(`hook ${name}: ${redact(line)}`, { stream });
  }
}
