import fs from 'node:fs';
import path from 'node:path';
import { CreateTopicCommand, SNSClient, SubscribeCommand } from '@aws-sdk/client-sns';
import { CreateQueueCommand, GetQueueAttributesCommand, ReceiveMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BINARY, REGION, credentials, runBinary, startAwsWorld, startController00, type AwsWorld, type BinaryController00 } from '../support/boot-env.js';

/**
 * No secret reaches any sink of the built binary: planted through the real entry points
 * (credentials in the environment; the bootstrap token the agent generates; a certificate
 * key kubeadm prints on the line after its label), at debug level, on a boot whose
 * `kubeadm init` fails and prints them all bare. Sinks: stderr, the log file, the state file,
 * the SNS message (failure.error, phases[].error, logTail).
 */

const SECRET_KEY = 'zdtPlantedSecretKey0123456789/abcdefGHIJ+'; // 41 characters, no label anywhere
const SESSION_TOKEN = 'IQoJb3JpZ2luX2VjEPlantedSessionToken0123456789abcdefghijklmnopqrstuvwxyz==';
const CERT_KEY = 'a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90';

let w: AwsWorld;
let node: BinaryController00;
let sqs: SQSClient;
let queueUrl: string;
let topicArn: string;

beforeAll(async () => {
  if (!fs.existsSync(BINARY)) throw new Error(`${BINARY} is missing: run 'make binary' first`);
  w = await startAwsWorld();
  const common = { region: REGION, endpoint: w.proxy.endpoint, credentials };
  const sns = new SNSClient(common);
  sqs = new SQSClient(common);
  topicArn = (await sns.send(new CreateTopicCommand({ Name: 'zdt-secrets' }))).TopicArn!;
  queueUrl = (await sqs.send(new CreateQueueCommand({ QueueName: 'zdt-secrets' }))).QueueUrl!;
  const queueArn = (await sqs.send(new GetQueueAttributesCommand({ QueueUrl: queueUrl, AttributeNames: ['QueueArn'] }))).Attributes!.QueueArn!;
  await sns.send(new SubscribeCommand({ TopicArn: topicArn, Protocol: 'sqs', Endpoint: queueArn }));
  node = await startController00(w, { config: { cluster: { name: 'secrets', kubernetesVersion: '1.34.X' }, notify: { snsTopicArn: topicArn } } });
}, 120_000);

afterAll(async () => {
  await node?.stop();
  await w?.stop();
});

/** A kubeadm that prints what a careless tool would: the token from its config, the credentials it inherited, a certificate key. */
function leakyKubeadm(dir: string): string {
  const bin = path.join(dir, 'leaky-bin');
  fs.mkdirSync(bin, { recursive: true });
  fs.writeFileSync(
    path.join(bin, 'kubeadm'),
    `#!/bin/sh
config=$(printf '%s\\n' "$@" | sed -n '/^--config$/{n;p}')
token=$(sed -n 's/^[ -]*token: *//p' "$config" | tr -d '"')
echo "[upload-certs] Storing the certificates in Secret \\"kubeadm-certs\\""
echo "[upload-certs] Using certificate key:"
echo "${CERT_KEY}"
echo "joining with $token"
echo "$AWS_SECRET_ACCESS_KEY" >&2
echo "session $AWS_SESSION_TOKEN" >&2
echo "[ERROR Port-6443]: Port 6443 is in use; token was $token" >&2
exit 1
`,
    { mode: 0o755 },
  );
  return bin;
}

describe('secrets in every sink of the built binary', () => {
  it('a failing kubeadm init that prints the token, the credentials and a certificate key leaks none of them', async () => {
    const bin = leakyKubeadm(node.root.dir);
    const env = { ...node.env, PATH: `${bin}:${node.env.PATH}`, AWS_SECRET_ACCESS_KEY: SECRET_KEY, AWS_SESSION_TOKEN: SESSION_TOKEN };
    const r = await runBinary(['boot', '--root', node.root.dir, '--log-level', 'debug'], env);
    expect(r.code, r.stderr).toBe(1);
    const initYaml = fs.readFileSync(node.root.at('/etc/kubernetes/zdt-agent/init.yaml'), 'utf8');
    const token = /token: "?([a-z0-9]{6}\.[a-z0-9]{16})/.exec(initYaml)![1]!;
    const msg = await sqs.send(new ReceiveMessageCommand({ QueueUrl: queueUrl, WaitTimeSeconds: 5, MaxNumberOfMessages: 10 }));
    const sns = (msg.Messages ?? []).map((m) => (JSON.parse(m.Body!) as { Message: string }).Message).join('\n');
    const sinks = {
      stderr: r.stderr,
      log: fs.readFileSync(node.root.at('/var/log/zdt-agent.log'), 'utf8'),
      state: fs.readFileSync(node.root.at('/var/lib/zdt-agent/state.json'), 'utf8'),
      sns,
    };
    // The sinks carry the failure (so this test sees what it means to), and no secret.
    expect(sinks.sns).toContain('boot.failed');
    expect(sinks.log).toMatch(/WARN .*kubeadm output: \[ERROR Port-6443\]: Port 6443 is in use/);
    expect(sinks.stderr).toMatch(/^zdt-agent: CommandFailed: kubeadm init/m);
    expect(sinks.log).toContain(`${token.slice(0, 6)}.[REDACTED]`); // the kubeadm stand-in did print it
    const secretHalf = token.slice(7);
    for (const [sink, text] of Object.entries(sinks)) {
      for (const secret of [SECRET_KEY, SESSION_TOKEN, CERT_KEY, secretHalf, JSON.stringify(SECRET_KEY).slice(1, -1)]) {
        expect(text.includes(secret), `${sink} carries ${secret.slice(0, 12)}…`).toBe(false);
      }
    }
  });

  it('a YAML tag quoting a secret gives the config error without the value, and no Node warning on stderr', async () => {
    const file = node.root.at('/tagged.yaml');
    fs.writeFileSync(file, `cluster:\n  name: secrets\n  apiEndpoint: !vault ${SECRET_KEY}\n`);
    const r = await runBinary(['boot', '--root', node.root.dir, '--config', file], node.env);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^zdt-agent: ConfigSyntax: .*tagged\.yaml line 3: Unresolved tag: !vault/);
    expect(r.stderr).not.toContain(SECRET_KEY);
    expect(r.stderr).not.toMatch(/Warning|YAMLWarning/);
  });
});
