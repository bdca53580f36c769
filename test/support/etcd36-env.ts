import fs from 'node:fs';
import path from 'node:path';
import { etcd36BinDir, etcdTool, type EtcdTls } from '../testbed/etcd.js';

/**
 * Shared by the tests against etcd 3.6 (etcd36-*.test.ts, etcd-restore-watch.test.ts): the
 * tools on PATH and kubeadm's etcd client certificate in a node root (S3 for the backups:
 * startMinioS3 in minio-env.ts).
 */

/**
 * Puts etcd 3.6's etcdctl and etcdutl first on PATH, where the agent's commands find them (as
 * on a Kubernetes 1.34 controller); returns the undo. Throws when etcd36/build.sh has not run.
 */
export function useEtcd36Tools(): () => void {
  if (!fs.existsSync(etcdTool('3.6', 'etcdutl'))) throw new Error(`etcd 3.6 is missing in ${etcd36BinDir()}: run test/testbed/etcd36/build.sh`);
  const before = process.env.PATH ?? '';
  process.env.PATH = `${etcd36BinDir()}${path.delimiter}${before}`;
  return () => {
    process.env.PATH = before;
  };
}

/** kubeadm's etcd CA and healthcheck-client certificate where the agent reads them: `<root>/etc/kubernetes/pki/etcd/`. */
export function installEtcdClientCert(root: string, pki: EtcdTls): void {
  const to = path.join(root, 'etc/kubernetes/pki/etcd');
  fs.mkdirSync(to, { recursive: true });
  for (const f of ['ca.crt', 'healthcheck-client.crt', 'healthcheck-client.key']) fs.copyFileSync(path.join(pki.caDir, f), path.join(to, f));
}
