import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

/**
 * A test CA in a directory, made with openssl: `ca.crt`/`ca.key`, and certificates it signs
 * as `<name>.crt`/`<name>.key` beside them (RSA 2048, valid two days). For the kube-apiserver
 * and etcd over TLS.
 */

const run = promisify(execFile);

async function openssl(cwd: string, ...args: string[]): Promise<void> {
  await run('openssl', args, { cwd });
}

export interface Credentials {
  cert: string;
  key: string;
}

export interface TestCa {
  dir: string;
  /** PEM of the CA certificate. */
  ca: string;
  /**
   * A certificate for `serverAuth` with these subjectAltNames (`IP:127.0.0.1`, `DNS:localhost`);
   * `alsoClient` adds `clientAuth`, as kubeadm's etcd server certificate has (etcd's
   * HTTP/JSON gateway dials etcd's own gRPC port with it).
   */
  server(name: string, subject: string, altNames: string[], o?: { alsoClient?: boolean }): Promise<Credentials>;
  /** A certificate for `clientAuth`. */
  client(name: string, subject: string): Promise<Credentials>;
}

export async function makeTestCa(dir: string, cn = 'zdt-testbed-ca'): Promise<TestCa> {
  await fs.mkdir(dir, { recursive: true });
  await openssl(dir, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', `/CN=${cn}`);
  const sign = async (name: string, subject: string, ext: string): Promise<Credentials> => {
    await fs.writeFile(path.join(dir, `${name}.ext`), `basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n${ext}`);
    await openssl(dir, 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    await openssl(dir, 'x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`);
    return { cert: await fs.readFile(path.join(dir, `${name}.crt`), 'utf8'), key: await fs.readFile(path.join(dir, `${name}.key`), 'utf8') };
  };
  return {
    dir,
    ca: await fs.readFile(path.join(dir, 'ca.crt'), 'utf8'),
    server: (name, subject, altNames, o) => sign(name, subject, `extendedKeyUsage=serverAuth${o?.alsoClient ? ',clientAuth' : ''}\nsubjectAltName=${altNames.join(',')}\n`),
    client: (name, subject) => sign(name, subject, 'extendedKeyUsage=clientAuth\n'),
  };
}

/** An RSA key pair as `<name>.key` and `<name>.pub` (the service account signing key). */
export async function makeKeyPair(dir: string, name: string): Promise<void> {
  await openssl(dir, 'genrsa', '-out', `${name}.key`, '2048');
  await openssl(dir, 'rsa', '-in', `${name}.key`, '-pubout', '-out', `${name}.pub`);
}
