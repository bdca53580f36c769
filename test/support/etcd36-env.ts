import fs from 'node:fs';
import path from 'node:path';
import type { S3Client } from '@aws-sdk/client-s3';
import { etcd36BinDir, etcdTool, type EtcdTls } from '../testbed/etcd.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startMoto } from '../testbed/moto.js';
import { makeBucket, testClients, useTestCredentials } from './terminate-env.js';

/**
 * Shared by the tests against etcd 3.6 (etcd36-*.test.ts, etcd-restore-watch.test.ts): the
 * tools on PATH, S3 for the backups, kubeadm's etcd client certificate in a node root.
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

/** moto behind the fidelity proxy, with `bucket` made and test credentials in the environment. */
export async function startS3(bucket: string): Promise<{ proxy: FidelityProxy; s3: S3Client; stop(): Promise<void> }> {
  useTestCredentials();
  const moto = await startMoto();
  try {
    const proxy = await startFidelityProxy({ target: moto.endpoint });
    const { s3 } = testClients(proxy.endpoint);
    await makeBucket(s3, bucket);
    return {
      proxy,
      s3,
      stop: async () => {
        await proxy.stop();
        await moto.stop();
      },
    };
  } catch (err) {
    await moto.stop();
    throw err;
  }
}

/** kubeadm's etcd CA and healthcheck-client certificate where the agent reads them: `<root>/etc/kubernetes/pki/etcd/`. */
export function installEtcdClientCert(root: string, pki: EtcdTls): void {
  const to = path.join(root, 'etc/kubernetes/pki/etcd');
  fs.mkdirSync(to, { recursive: true });
  for (const f of ['ca.crt', 'healthcheck-client.crt', 'healthcheck-client.key']) fs.copyFileSync(path.join(pki.caDir, f), path.join(to, f));
}
