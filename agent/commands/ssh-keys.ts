import type { GlobalOptions } from '../context.js';
import { runSshKeysLookup } from '../ssh/lookup.js';

/**
 * `zdt-agent ssh-keys USER [FINGERPRINT]`, sshd's AuthorizedKeysCommand. main.ts answers
 * from the key cache before the CLI loads; this is the rest (agent/ssh/lookup.ts). Exit 0
 * with key lines or none; non-zero (no output) when IAM could not say.
 */
export async function runSshKeys(args: GlobalOptions & { user?: unknown; fingerprint?: unknown }): Promise<number> {
  return runSshKeysLookup({
    user: String(args.user ?? ''),
    fingerprint: args.fingerprint === undefined ? undefined : String(args.fingerprint),
    config: args.config,
    root: args.root,
    logLevel: args.logLevel,
    logFormat: args.logFormat,
  });
}
