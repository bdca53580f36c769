import { execa } from 'execa';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { etcdTool, startEtcd, startEtcdCluster } from '../testbed/etcd.js';
import { kubeBinDir } from '../testbed/kube.js';
import { createLoopDevice, mountpoints } from '../testbed/loop.js';
import { makeTempRoot } from '../testbed/root.js';
import { readRecords, standinEnv } from '../testbed/standins.js';

// Everything a test creates is undone here, last created first, even when the test failed.
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const undo of cleanups.splice(0).reverse()) await undo();
});

async function tempDir(): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'zdt-testbed-'));
  cleanups.push(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

const isRunning = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('a loop device stands in for an EBS volume', () => {
  it('takes a real ext4 file system under its by-id name, mounts, and is gone after detach', async () => {
    const root = await makeTempRoot();
    cleanups.push(root.cleanup);
    const loop = await createLoopDevice(64);
    cleanups.push(loop.detach);
    const byId = await root.linkVolume('vol-0123456789abcdef0', loop.device);
    const mnt = root.at('/var/lib/etcd');
    await fs.mkdir(mnt, { recursive: true });

    await execa('mkfs.ext4', ['-q', '-L', 'etcd', byId]);
    const { stdout: type } = await execa('blkid', ['-p', '-o', 'value', '-s', 'TYPE', byId]);
    await execa('mount', [byId, mnt]);
    await fs.writeFile(path.join(mnt, 'member'), 'data');

    expect(path.basename(byId)).toBe('nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0');
    expect(type).toBe('ext4');
    expect(await mountpoints(['--source', loop.device])).toEqual([mnt]);

    await loop.detach();

    expect(await mountpoints(['--source', loop.device])).toEqual([]);
    expect((await execa('losetup', ['--associated', loop.file])).stdout).toBe('');
    await expect(fs.stat(loop.file)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('removes a temp root only after unmounting what is still mounted in it', async () => {
    const root = await makeTempRoot();
    const loop = await createLoopDevice(32);
    cleanups.push(loop.detach, root.cleanup);
    await execa('mkfs.ext4', ['-q', loop.device]);
    await fs.mkdir(root.at('/var/lib/etcd'), { recursive: true });
    await execa('mount', [loop.device, root.at('/var/lib/etcd')]);

    await root.cleanup();

    expect(await mountpoints(['--source', loop.device])).toEqual([]);
    await expect(fs.stat(root.dir)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('etcd runs as real servers on loopback ports', () => {
  it('serves a put and a get, and is gone after stop', async () => {
    const etcd = await startEtcd({ dir: path.join(await tempDir(), 'data'), name: 'controller-a' });
    cleanups.push(etcd.stop);
    const etcdctl = (...args: string[]) => execa('etcdctl', ['--endpoints', etcd.clientUrl, ...args]);

    await etcdctl('put', '/zdt/test', 'hello');
    const { stdout } = await etcdctl('get', '/zdt/test', '--print-value-only');
    await etcd.stop();

    expect(stdout).toBe('hello');
    expect(isRunning(etcd.pid)).toBe(false);
    await expect(fetch(`${etcd.clientUrl}/health`)).rejects.toThrow();
  });

  it('forms a three-member cluster that replicates a write', async () => {
    const cluster = await startEtcdCluster(3);
    cleanups.push(cluster.stop);
    const [first, , third] = cluster.members;

    await execa('etcdctl', ['--endpoints', first!.clientUrl, 'put', '/zdt/leader', 'controller-a']);
    const { stdout: value } = await execa('etcdctl', ['--endpoints', third!.clientUrl, 'get', '/zdt/leader', '--print-value-only']);
    const { stdout: members } = await execa('etcdctl', ['--endpoints', cluster.clientUrls.join(','), 'member', 'list']);

    expect(value).toBe('controller-a');
    expect(members.trim().split('\n')).toHaveLength(3);
  });
});

describe('etcd 3.6 as kubeadm 1.34 deploys it (etcd36/build.sh)', () => {
  it('etcd, etcdctl and etcdutl report the release pinned in etcd36/go.mod, the etcd the real kubeadm deploys', async () => {
    const pinned = /go\.etcd\.io\/etcd\/server\/v3 v(3\.6\.\d+)/.exec(await fs.readFile(new URL('../testbed/etcd36/go.mod', import.meta.url), 'utf8'))![1]!;
    const kubernetes = /^\tk8s\.io\/kubernetes (v1\.\d+\.\d+)$/m.exec(await fs.readFile(new URL('../testbed/k8s/go.mod', import.meta.url), 'utf8'))![1]!;
    const images = await execa(path.join(kubeBinDir(), 'kubeadm'), ['config', 'images', 'list', '--kubernetes-version', kubernetes]);
    expect(images.stdout).toContain(`registry.k8s.io/etcd:${pinned}-0`);
    expect((await execa(etcdTool('3.6', 'etcd'), ['--version'])).stdout).toContain(`etcd Version: ${pinned}`);
    expect((await execa(etcdTool('3.6', 'etcdctl'), ['version'])).stdout).toContain(`etcdctl version: ${pinned}`);
    expect((await execa(etcdTool('3.6', 'etcdutl'), ['version'])).stdout).toContain(`etcdutl version: ${pinned}`);
  });
});

describe('recording stand-ins replace tools that need an EC2 node', () => {
  it('records argv, stdin and cwd, and answers with the configured output and exit code', async () => {
    const dir = await tempDir();
    const records = path.join(dir, 'calls.jsonl');
    const env = standinEnv(records, { ZDT_STANDIN_KUBEADM_STDOUT: 'kubeadm join ok\n', ZDT_STANDIN_MODPROBE_EXIT: '1' });

    const join = await execa('kubeadm', ['join', '--config', '-'], { env, cwd: dir, input: 'kind: JoinConfiguration\n' });
    const modprobe = await execa('modprobe', ['br_netfilter'], { env, reject: false });
    await execa('rc-service', ['kubelet', 'start'], { env });

    expect(join.stdout).toBe('kubeadm join ok');
    expect(modprobe.exitCode).toBe(1);
    expect(await readRecords(records)).toMatchObject([
      { tool: 'kubeadm', argv: ['join', '--config', '-'], stdin: 'kind: JoinConfiguration\n', cwd: dir },
      { tool: 'modprobe', argv: ['br_netfilter'], stdin: '' },
      { tool: 'rc-service', argv: ['kubelet', 'start'] },
    ]);
  });

  it('answers apk queries from ZDT_APK_VERSIONS and refuses an unlisted pinned version', async () => {
    const records = path.join(await tempDir(), 'calls.jsonl');
    const env = standinEnv(records, { ZDT_APK_VERSIONS: '1.31.2-r0,1.30.6-r1' });

    const policy = await execa('apk', ['policy', 'kubeadm'], { env });
    const search = await execa('apk', ['search', '-x', 'kubelet'], { env });
    const pinned = await execa('apk', ['add', '--no-cache', 'kubeadm=1.29.0-r0'], { env, reject: false });

    expect(policy.stdout).toBe('kubeadm policy:\n  1.31.2-r0:\n    test-repository\n  1.30.6-r1:\n    test-repository');
    expect(search.stdout.split('\n')).toEqual(['kubelet-1.31.2-r0', 'kubelet-1.30.6-r1']);
    expect(pinned.exitCode).toBe(1);
    expect(pinned.stderr).toContain('unable to select packages');
    expect((await readRecords(records)).map((r) => r.argv[0])).toEqual(['policy', 'search', 'add']);
  });
});
