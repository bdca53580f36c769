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

/**
 * Turn anything thrown into an AgentError without losing the original. `logFile`: the agent
 * log as this command writes it (under --root), which the hint names.
 */
export function asAgentError(err: unknown, logFile = '/var/log/zdt-agent.log'): AgentError {
  if (err instanceof AgentError) return err;
  const call = awsCallOf(err);
  if (call) {
    // A body that does not match its checksum was damaged on the way (or by something that
    // rewrites requests): permissions are not the question then.
    const damaged = /\b(XAmzContentChecksumMismatch|BadDigest|InvalidDigest)\b/.test(call);
    return new AgentError('AwsCallFailed', call, {
      hint: damaged
        ? 'the server refused a body that did not match its checksum: something between this node and the endpoint changed the data (proxy, TLS interception, faulty memory or NIC); nothing was stored, try again and check that path'
        : "check the instance role's permission for this call, the endpoint (aws.endpoint, aws.endpoints) and the service's health",
      cause: err,
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new AgentError('Unexpected', message.split('\n')[0] ?? message, {
    hint: `see ${logFile} for the detail`,
    cause: err,
  });
}

/**
 * `S3 HeadObject: NotFound (HTTP 404)` for an error of an AWS call (host/aws.ts names each
 * failed call), undefined for anything else.
 */
function awsCallOf(err: unknown): string | undefined {
  const e = err as { awsOperation?: unknown; name?: unknown; message?: unknown; $metadata?: { httpStatusCode?: number } } | null;
  if (typeof e?.awsOperation !== 'string') return undefined;
  const name = typeof e.name === 'string' ? e.name : 'Error';
  // The SDK's own request timeout reads `@smithy/node-http-handler - [ERROR] a request has …`.
  const message = typeof e.message === 'string' ? (e.message.split('\n')[0] ?? '').replace(/^@smithy\/[\w-]+ - \[\w+\] /, '') : '';
  const status = e.$metadata?.httpStatusCode;
  // An error without a body (any HEAD) is `Unknown: UnknownError`: only the status says anything.
  if (name === 'Unknown' && status) return `${e.awsOperation}: HTTP ${status}`;
  const what = message && message !== name ? `${name}: ${message}` : name;
  return `${e.awsOperation}: ${what}${status ? ` (HTTP ${status})` : ''}`;
}

/** A command's exit code; an error becomes its one line on stderr and its exit code (the CLI and main.ts's own paths). */
export async function exitCodeOf(run: () => Promise<number>, logFile?: string): Promise<number> {
  try {
    return await run();
  } catch (err) {
    const e = asAgentError(err, logFile);
    process.stderr.write(`zdt-agent: ${e.oneLine()}\n`);
    return e.exitCode;
  }
}
