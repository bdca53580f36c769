import path from 'node:path';
import { buildContext, type GlobalOptions } from '../context.js';
import { ExitCode } from '../errors.js';
import { redact } from '../log/redact.js';
import { syncSsh } from '../ssh/sync.js';

/**
 * `zdt-agent ssh-users sync` (root, periodic): refresh the key cache from IAM and, in
 * per-user mode, create and remove the local accounts of group members. When another sync
 * holds the lock past the wait it exits 0 having done nothing (the warning is the record):
 * the next periodic run catches up.
 */
export async function runSshUsersSync(args: GlobalOptions, o: { lockWaitMs?: number } = {}): Promise<number> {
  const ctx = await buildContext(args, { instance: 'cached' });
  // The periodic job runs on every node of the image; only bastions have an ssh section.
  if (!ctx.config.ssh) {
    ctx.log.debug('no ssh section in the configuration: nothing to sync');
    return ExitCode.ok;
  }
  const r = await syncSsh(ctx, args.config ? path.resolve(args.config) : null, o);
  if (!r.ran) return ExitCode.ok;
  const keys = r.snapshot.members.reduce((n, m) => n + (m.keys?.length ?? 0), 0);
  const lines = [`group ${r.snapshot.group}: ${r.snapshot.members.length} members, ${keys} active keys; cache ${r.cacheFile}`];
  if (r.users) {
    const u = r.users;
    lines.push(`accounts: created ${u.created.join(' ') || '-'}; removed ${u.removed.join(' ') || '-'}; not ours, left alone ${u.unmanaged.join(' ') || '-'}`);
    for (const f of u.failed) lines.push(`failed: ${f.user}: ${f.error}`);
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  const failed = r.users?.failed ?? [];
  if (failed.length === 0) return ExitCode.ok;
  const first = failed[0] as { user: string; error: string };
  process.stderr.write(`zdt-agent: ${redact(`SshUsersFailed: ${failed.length} account${failed.length === 1 ? '' : 's'} not synced; first: ${first.user}: ${first.error}`)}\n`);
  return ExitCode.failed;
}
