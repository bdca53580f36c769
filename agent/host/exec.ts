import { spawn } from 'node:child_process';
import { AgentError, DeadlineError } from '../errors.js';
import type { Logger } from '../log/logger.js';
import { redact, registerSecretsPrintedIn } from '../log/redact.js';

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
/** Lines of a failed command's output logged at warn (stdout, then stderr). */
const FAILURE_LINES = 20;
/** More output than this is a runaway command: it is killed and the run fails. */
const OUTPUT_MAX = 64 * 1024 * 1024;
/** After the SIGKILL, how long to wait for the output pipes before giving up on them. */
const PIPE_GRACE_MS = 1000;

function clip(s: string): string {
  return s.length > OUTPUT_LOG_MAX ? `${s.slice(0, OUTPUT_LOG_MAX)}… (${s.length - OUTPUT_LOG_MAX} more bytes)` : s;
}

/** Captured output as text, without the one final newline (what `$(…)` in a shell gives). */
function text(chunks: Buffer[]): string {
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

interface Ended {
  /** Set when the process exited; null when a signal ended it. */
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** Set when it could not be started (ENOENT, EACCES). */
  spawnError?: NodeJS.ErrnoException | undefined;
}

/**
 * Every subprocess of the agent goes through here: a timeout with a kill grace, output
 * captured into the log, and secrets redacted before anything is logged or raised.
 *
 * Plain node:child_process, no wrapper library: execa cost the binary about 20 ms to load
 * and more per run than the spawn itself (README, dependencies).
 */
export function makeExec(log: Logger): Exec {
  return async (file, args, opts) => {
    const cmdline = redact([file, ...args].join(' '));
    const started = Date.now();
    log.debug('exec', { cmd: cmdline, timeoutMs: opts.timeoutMs });
    // Own process group (detached): a timeout must end the command's children too (`sh -c
    // 'sleep'`, kubeadm's helpers), or they keep its output pipes open and the wait never ends.
    // No input: stdin is /dev/null, so a command that reads it does not wait on an open pipe.
    const child = spawn(file, [...args], {
      detached: true,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
      env: opts.env ? { ...process.env, ...opts.env } : process.env,
      cwd: opts.cwd,
    });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    let outputBytes = 0;
    let overflowed = false;
    let timedOut = false;
    let graceTimer: NodeJS.Timeout | undefined;
    let pipeTimer: NodeJS.Timeout | undefined;

    const killGroup = (signal: NodeJS.Signals) => {
      if (child.pid === undefined) return;
      try {
        process.kill(-child.pid, signal);
      } catch {
        // Already gone.
      }
    };
    const stop = () => {
      if (graceTimer) return;
      killGroup('SIGTERM');
      graceTimer = setTimeout(() => {
        killGroup('SIGKILL');
        // A descendant that left the group (setsid) may still hold the pipes: stop reading.
        pipeTimer = setTimeout(() => {
          child.stdout?.destroy();
          child.stderr?.destroy();
        }, PIPE_GRACE_MS);
      }, opts.killGraceMs ?? 5000);
    };
    const collect = (into: Buffer[]) => (chunk: Buffer) => {
      outputBytes += chunk.length;
      if (outputBytes > OUTPUT_MAX) {
        overflowed = true;
        stop();
        return;
      }
      into.push(chunk);
    };
    child.stdout?.on('data', collect(stdout));
    child.stderr?.on('data', collect(stderr));
    if (child.stdin) {
      // A command that exits without reading its input closes the pipe: EPIPE is not a failure.
      child.stdin.on('error', () => {});
      child.stdin.end(opts.input);
    }

    const timer = setTimeout(() => {
      timedOut = true;
      stop();
    }, opts.timeoutMs);
    const ended = await new Promise<Ended>((resolve) => {
      child.on('error', (err: NodeJS.ErrnoException) => {
        // Failed to start; 'close' may not follow.
        if (child.pid === undefined) resolve({ exitCode: null, signal: null, spawnError: err });
      });
      child.on('close', (exitCode, signal) => resolve({ exitCode, signal }));
    });
    clearTimeout(timer);
    clearTimeout(graceTimer);
    clearTimeout(pipeTimer);

    const durationMs = Date.now() - started;
    const out = text(stdout);
    const err = text(stderr);
    // Before any of it is logged or raised: a key the command generated and printed (kubeadm's
    // certificate key) is then redacted by value, also where its label is on another line.
    registerSecretsPrintedIn(`${out}\n${err}`);
    if (out) log.debug('exec stdout', { cmd: file, out: clip(out) });
    if (err) log.debug('exec stderr', { cmd: file, err: clip(err) });
    // The output is logged at debug only; a failure's last lines belong in the default log,
    // where the error's hint sends the operator.
    const logOutputTail = () => {
      for (const line of `${out}\n${err}`.split('\n').filter((l) => l.trim()).slice(-FAILURE_LINES)) log.warn(`${file} output: ${line}`);
    };
    if (timedOut) {
      logOutputTail();
      throw new DeadlineError('CommandTimedOut', `${cmdline} did not finish within ${opts.timeoutMs} ms`, {
        hint: opts.hint ?? `check why ${file} hangs`,
      });
    }
    if (ended.spawnError) {
      const why = ended.spawnError.code === 'ENOENT' ? 'not found on PATH' : `could not start (${ended.spawnError.code ?? redact(ended.spawnError.message)})`;
      throw new AgentError('CommandFailed', `${cmdline}: ${why}`, { hint: opts.hint ?? `check that ${file} is installed` });
    }
    if (overflowed) {
      throw new AgentError('CommandFailed', `${cmdline}: more than ${OUTPUT_MAX / 1024 / 1024} MiB of output; stopped`, {
        hint: opts.hint ?? 'see the log for the start of its output',
      });
    }
    if (ended.exitCode === null) {
      logOutputTail();
      throw new AgentError('CommandFailed', `${cmdline}: killed by ${ended.signal ?? 'a signal'}`, {
        hint: opts.hint ?? 'check what else on the node sends signals (OOM killer, an operator)',
      });
    }
    const exitCode = ended.exitCode;
    const ok = exitCode === 0 || (opts.okExitCodes ?? []).includes(exitCode);
    log.info('ran', { cmd: file, exit: exitCode, ms: durationMs });
    if (!ok) {
      logOutputTail();
      const lastErr = redact(err.trim().split('\n').slice(-3).join(' | ')) || '(no stderr)';
      throw new AgentError('CommandFailed', `${cmdline} exited ${exitCode}: ${lastErr}`, {
        hint: opts.hint ?? 'see the log for its full output',
      });
    }
    return { exitCode, stdout: out, stderr: err, durationMs };
  };
}
