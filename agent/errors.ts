/**
 * Errors are values with a code, what failed, and what to check next.
 * The top level prints one line (`code: message; hint`) and maps the exit code.
 */
import { redact } from './log/redact.js';

export const ExitCode = {
  ok: 0,
  failed: 1,
  usage: 2,
  deadline: 3,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export class AgentError extends Error {
  readonly code: string;
  readonly hint: string | undefined;
  readonly exitCode: ExitCode;

  constructor(
    code: string,
    message: string,
    opts: { hint?: string; exitCode?: ExitCode; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = code;
    this.code = code;
    this.hint = opts.hint;
    this.exitCode = opts.exitCode ?? ExitCode.failed;
  }

  /** The one line an operator reads, redacted: it goes to stderr, the state file and SNS. */
  oneLine(): string {
    return redact(this.hint ? `${this.code}: ${this.message}; ${this.hint}` : `${this.code}: ${this.message}`);
  }
}

/** A configuration or usage problem: exit 2, nothing was changed. */
export class ConfigError extends AgentError {
  constructor(code: string, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super(code, message, { ...opts, exitCode: ExitCode.usage });
  }
}

/** A bounded wait or budget ran out: exit 3. */
export class DeadlineError extends AgentError {
  constructor(code: string, message: string, opts: { hint?: string; cause?: unknown } = {}) {
    super(code, message, { ...opts, exitCode: ExitCode.deadline });
  }
}

/** Turn anything thrown into an AgentError without losing the original. */
export function asAgentError(err: unknown): AgentError {
  if (err instanceof AgentError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new AgentError('Unexpected', message.split('\n')[0] ?? message, {
    hint: 'see /var/log/zdt-agent.log for the detail',
    cause: err,
  });
}

/** A command's exit code; an error becomes its one line on stderr and its exit code (the CLI and main.ts's own paths). */
export async function exitCodeOf(run: () => Promise<number>): Promise<number> {
  try {
    return await run();
  } catch (err) {
    const e = asAgentError(err);
    process.stderr.write(`zdt-agent: ${e.oneLine()}\n`);
    return e.exitCode;
  }
}
