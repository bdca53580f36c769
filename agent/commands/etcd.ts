import { buildContext, type GlobalOptions } from '../context.js';
import { ConfigError, DeadlineError, ExitCode } from '../errors.js';
import { isController } from '../node.js';
import { describeRestore, restoreBackup } from '../etcd/restore.js';
import { scheduledBackup } from '../etcd/scheduled.js';

export interface EtcdArgs extends GlobalOptions {
  /** yargs allows only 'backup' and 'restore'. */
  action?: unknown;
  from?: string | undefined;
  dataDir?: string | undefined;
  memberName?: string | undefined;
  peerUrl?: string | undefined;
  initialCluster?: string | undefined;
  clusterToken?: string | undefined;
  pkiOnly?: boolean | undefined;
}

/** `zdt-agent etcd backup` (hourly, leader only) and `zdt-agent etcd restore`. */
export async function runEtcd(args: EtcdArgs): Promise<number> {
  const ctx = await buildContext(args, { instance: 'cached' });
  if (!isController(ctx.config) || !ctx.config.etcd) {
    throw new ConfigError('NotAController', `etcd ${String(args.action)} runs on controllers; this node is a ${ctx.config.node.role}`, { hint: 'check node.role and the etcd section' });
  }
  if (args.action === 'backup') {
    const limitS = ctx.config.etcd.backup.timeout;
    const signal = AbortSignal.timeout(limitS * 1000);
    const { instanceId } = await ctx.imds.identityDocument();
    try {
      const r = await scheduledBackup(ctx, { instanceId, signal });
      if (r.result === 'skipped') {
        ctx.log.info(`no backup: ${r.reason}`);
        process.stdout.write(`skipped: ${r.reason}\n`);
        return ExitCode.ok;
      }
      process.stdout.write(`backup s3://${r.backup.bucket}/${r.backup.key} (${r.backup.sizeBytes} bytes, ${r.backup.durationMs} ms, verified); retention deleted ${r.deleted.length}\n`);
      return ExitCode.ok;
    } catch (err) {
      if (signal.aborted) throw new DeadlineError('BackupTimedOut', `the backup did not finish within etcd.backup.timeout (${limitS}s)`, { hint: 'check etcd and S3 reachability', cause: err });
      throw err;
    }
  }
  if (!args.dataDir) throw new ConfigError('DataDirMissing', 'etcd restore needs --data-dir', { hint: 'e.g. --data-dir /var/lib/etcd' });
  const r = await restoreBackup({
    ctx,
    from: args.from ?? 'latest',
    dataDir: args.dataDir,
    memberName: args.memberName,
    peerUrl: args.peerUrl,
    initialCluster: args.initialCluster,
    clusterToken: args.clusterToken,
    pkiOnly: args.pkiOnly,
  });
  process.stdout.write(
    `restored ${r.key} (cluster ${r.manifest.cluster}, etcd ${r.manifest.etcd.version}, revision ${r.manifest.etcd.revision}) into ${r.dataDir} with ${describeRestore(r)}; ${r.files.length} files written\n`,
  );
  return ExitCode.ok;
}
