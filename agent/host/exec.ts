import { execa } from 'execa';
import { AgentError, DeadlineError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { redact } from '../log/redact.js';

export interface RunOptions {
  /** Hard limit; the process gets SIGTERM, then SIGKILL after `killGraceMs`. */
  timeoutMs: number;
  killGraceMs?: number;
  input?: string | Uint8Array;
  env?: Record<string, string | undefined>;
  cwd?: string;
  /** Exit codes that are not failures (e.g. blkid's 2 for "no filesystem"). */
  okExitCodes?: readonly number[];
  /** What to check when it fails; appended to the error. */
  hint?: string;
}

export interface RunResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
}

export type Exec = (file: string, args: readonly string[], opts: RunOptions) => Promise<RunResult>;

const OUTPUT_LOG_MAX = 4000;

function clip(s: string): string {
  return s.length > OUTPUT_LOG_MAX ? `${s.slice(0, OUTPUT_LOG_MAX)}… (${s.length - OUTPUT_LOG_MAX} more bytes)` : s;
}

/**
 * Every subprocess of the agent goes through here: a timeout with a kill grace, output
 * captured into the log, and secrets redacted before anything is logged or raised.
 */
export function makeExec(log: Logger): Exec {
  return async (file, args, opts) => {
    const cmdline = redact([file, ...args].join(' '));
    const started = Date.now();
    log.debug('exec', { cmd: cmdline, timeoutMs: opts.timeoutMs });
    // Own process group: a timeout must end the command's children too (`sh -c 'sleep'`,
    // kubeadm's helpers), or they keep its output pipes open and the wait never ends.
    const child = execa(file, [...args], {
      detached: true,
      forceKillAfterDelay: false,
      // No input: stdin is /dev/null, so a command that reads it does not wait on an open pipe.
      ...(opts.input === undefined ? { stdin: 'ignore' as const } : { input: opts.input }),
      env: opts.env,
      extendEnv: true,
      cwd: opts.cwd,
      reject: false,
      stripFinalNewline: true,
      encoding: 'utf8',
      maxBuffer: 64 * 1024 * 1024,
    });
    let timedOut = false;
    const killGroup = (signal: NodeJS.Signals) => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, signal);
      } catch {
        // Already gone.
      }
    };
    let graceTimer: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      graceTimer = setTimeout(() => killGroup('SIGKILL'), opts.killGraceMs ?? 5000);
    }, opts.timeoutMs);
    const result = await child;
    clearTimeout(timer);
    if (graceTimer) clearTimeout(graceTimer);
    const durationMs = Date.now() - started;
    const stdout = String(result.stdout ?? '');
    const stderr = String(result.stderr ?? '');
    if (stdout) log.debug('exec stdout', { cmd: file, out: clip(stdout) });
    if (stderr) log.debug('exec stderr', { cmd: file, err: clip(stderr) });
    if (timedOut) {
      throw new DeadlineError('CommandTimedOut', `${cmdline} did not finish within ${opts.timeoutMs} ms`, {
        hint: opts.hint ?? `check why ${file} hangs`,
      });
    }
    if (result.failed && result.exitCode === undefined) {
      const why = result.code === 'ENOENT' ? 'not found on PATH' : redact(result.shortMessage ?? 'could not start');
      throw new AgentError('CommandFailed', `${cmdline}: ${why}`, { hint: opts.hint ?? `check that ${file} is installed` });
    }
    const exitCode = result.exitCode ?? -1;
    const ok = exitCode === 0 || (opts.okExitCodes ?? []).includes(exitCode);
    log.info('ran', { cmd: file, exit: exitCode, ms: durationMs });
    if (!ok) {
      const lastErr = redact(stderr.trim().split('\n').slice(-3).join(' | ')) || '(no stderr)';
      throw new AgentError('CommandFailed', `${cmdline} exited ${exitCode}: ${lastErr}`, {
        hint: opts.hint ?? 'see the log for its full output',
      });
    }
    return { exitCode, stdout, stderr, durationMs };
  };
}
