import { describe, expect, it } from 'vitest';
import { chooseRestoreTool, parseToolVersion, restoreArgs, type RestoreTool } from '../../agent/etcd/restore-tool.js';
import type { Exec } from '../../agent/host/exec.js';

/** The restore command line by tool and version (test/integration/etcd36-backup.test.ts runs the real tools). */

const base = { snapshot: '/d/s.db', dataDir: '/d/out', name: 'etcd00', peerUrl: 'https://etcd00.x:2380', initialCluster: 'etcd00=https://etcd00.x:2380', clusterToken: 'prod' };

describe('the etcd restore tool', () => {
  it('reads the version from `etcdutl version` and `etcdctl version` as 3.4 to 3.6 print it', () => {
    expect(parseToolVersion('etcdutl version: 3.6.5\nAPI version: 3.6')).toBe('3.6.5');
    expect(parseToolVersion('etcdctl version: 3.4.23\nAPI version: 3.4')).toBe('3.4.23');
    expect(parseToolVersion('etcdctl version: 3.5.24\nAPI version: 3.5\n')).toBe('3.5.24');
    expect(parseToolVersion('something else')).toBeUndefined();
  });

  it('adds --bump-revision with --mark-compacted only when the tool takes them and the bump is not 0', () => {
    const etcdutl: RestoreTool = { file: 'etcdutl', version: '3.6.5', bumpsRevision: true };
    const etcdctl34: RestoreTool = { file: 'etcdctl', version: '3.4.23', bumpsRevision: false };
    const common = ['snapshot', 'restore', '/d/s.db', '--data-dir=/d/out', '--name=etcd00', '--initial-advertise-peer-urls=https://etcd00.x:2380', '--initial-cluster=etcd00=https://etcd00.x:2380', '--initial-cluster-token=prod'];
    expect(restoreArgs(etcdutl, { ...base, revisionBump: 1_000_000_000 })).toEqual([...common, '--bump-revision=1000000000', '--mark-compacted']);
    expect(restoreArgs(etcdutl, { ...base, revisionBump: 0 })).toEqual(common);
    expect(restoreArgs(etcdctl34, { ...base, revisionBump: 1_000_000_000 })).toEqual(common);
  });

  it('bumps from 3.5.10 on (both tools); refuses an etcdctl of 3.6 or later without etcdutl', async () => {
    const reporting = (version: string): Exec => async (file) => ({ exitCode: 0, stdout: `${file} version: ${version}\nAPI version: x`, stderr: '', durationMs: 1 });
    expect(await chooseRestoreTool(reporting('3.5.9'), true)).toEqual({ file: 'etcdutl', version: '3.5.9', bumpsRevision: false });
    expect(await chooseRestoreTool(reporting('3.5.10'), true)).toEqual({ file: 'etcdutl', version: '3.5.10', bumpsRevision: true });
    expect(await chooseRestoreTool(reporting('3.5.24'), false)).toEqual({ file: 'etcdctl', version: '3.5.24', bumpsRevision: true });
    expect(await chooseRestoreTool(reporting('3.4.23'), false)).toEqual({ file: 'etcdctl', version: '3.4.23', bumpsRevision: false });
    await expect(chooseRestoreTool(reporting('3.7.0'), false)).rejects.toMatchObject({ code: 'EtcdRestoreToolMissing' });
  });
});
