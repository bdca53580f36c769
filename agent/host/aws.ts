import type { AutoScalingClient } from '@aws-sdk/client-auto-scaling';
import type { CloudFormationClient } from '@aws-sdk/client-cloudformation';
import type { EC2Client } from '@aws-sdk/client-ec2';
import type { IAMClient } from '@aws-sdk/client-iam';
import type { KMSClient } from '@aws-sdk/client-kms';
import type { Route53Client } from '@aws-sdk/client-route-53';
import type { S3Client } from '@aws-sdk/client-s3';
import type { SNSClient } from '@aws-sdk/client-sns';
import type { STSClient } from '@aws-sdk/client-sts';
import type { AwsCredentialIdentity, AwsCredentialIdentityProvider } from '@smithy/types';
import type { Config } from '../config/schema.js';
import { ConfigError } from '../errors.js';
import { registerAwsCredentials } from '../log/redact.js';
import { isAwsRegion } from './imds.js';

/**
 * The one place AWS clients are made. Every client is created on first use through a
 * dynamic import, so commands that never touch a service never load its code (`version`
 * and the ssh-keys cache hit load none). Region, credentials, endpoints, retry mode and
 * timeouts are set here and nowhere else.
 */


/**
 * The SDK modules, each imported once. A bundled `import()` copies the module's exports on
 * every call (client-ec2 has about 2000), so call sites share these promises.
 */
const once = <T>(load: () => Promise<T>): (() => Promise<T>) => {
  let p: Promise<T> | undefined;
  return () => (p ??= load());
};
export const sdk = {
  autoscaling: once(() => import('./sdk/autoscaling.js')),
  cloudformation: once(() => import('./sdk/cloudformation.js')),
  ec2: once(() => import('./sdk/ec2.js')),
  iam: once(() => import('./sdk/iam.js')),
  kms: once(() => import('./sdk/kms.js')),
  route53: once(() => import('./sdk/route53.js')),
  s3: once(() => import('./sdk/s3.js')),
  sns: once(() => import('./sdk/sns.js')),
  sts: once(() => import('./sdk/sts.js')),
};

type Service = keyof Config['aws']['endpoints'];

/** What registerResolvedCredentials needs of a client: every SDK v3 client has both. */
interface SdkClient {
  config: { credentials?: (o?: Record<string, unknown>) => Promise<AwsCredentialIdentity> };
  middlewareStack: { add(mw: (next: (args: unknown) => Promise<unknown>) => (args: unknown) => Promise<unknown>, o: { step: 'build'; name: string }): void };
}

/**
 * Registers with the redactor the credentials a client signs with, whichever provider of the
 * chain found them (environment, IMDS role, an assumed role), before its first request: an
 * SDK error or a debug dump quoting them is then redacted. The provider is memoized by the SDK,
 * so asking it again costs nothing; a provider that fails is left to fail in the SDK's own
 * resolution, with its own error.
 */
function registerResolvedCredentials<T>(client: T): T {
  const c = client as unknown as SdkClient;
  c.middlewareStack.add(
    (next) => async (args) => {
      if (typeof c.config.credentials === 'function') registerAwsCredentials(await c.config.credentials().catch(() => undefined));
      return next(args);
    },
    { step: 'build', name: 'zdtRegisterCredentials' },
  );
  return client;
}

export interface AwsOptions {
  aws: Config['aws'];
  /** Region to use when the config names none (from IMDS). */
  region: () => Promise<string>;
  /** Credentials other than the default chain (instance profile on a node), e.g. an assumed role. */
  credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider;
}

export interface Aws {
  ec2(): Promise<EC2Client>;
  s3(): Promise<S3Client>;
  sns(): Promise<SNSClient>;
  iam(credentials?: AwsCredentialIdentity | AwsCredentialIdentityProvider): Promise<IAMClient>;
  sts(): Promise<STSClient>;
  kms(): Promise<KMSClient>;
  autoscaling(): Promise<AutoScalingClient>;
  cloudformation(): Promise<CloudFormationClient>;
  route53(): Promise<Route53Client>;
  /** Region resolved for these clients. */
  region(): Promise<string>;
}

/**
 * The region as the AWS SDKs and CLI find it, before IMDS: `AWS_REGION`, then
 * `AWS_DEFAULT_REGION`. A bastion's ssh-keys with either set never waits for IMDS. A value
 * that is no region is a configuration error, not a hostname to send requests to.
 */
export function regionFromEnv(env: NodeJS.ProcessEnv = process.env): string | undefined {
  for (const name of ['AWS_REGION', 'AWS_DEFAULT_REGION'] as const) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    if (!isAwsRegion(v)) {
      throw new ConfigError('RegionInvalid', `${name} is not an AWS region (${JSON.stringify(v.slice(0, 40))})`, {
        hint: `set ${name} to a region such as eu-central-1, or unset it`,
      });
    }
    return v;
  }
  return undefined;
}

export function makeAws(o: AwsOptions): Aws {
  let regionP: Promise<string> | undefined;
  // config aws.region, then the environment, then (o.region) IMDS: the SDKs' order.
  const region = () =>
    (regionP ??= (async () => o.aws.region ?? regionFromEnv() ?? (await o.region()))());
  const cache = new Map<string, Promise<unknown>>();

  const common = async (service: Service) => {
    const endpoint = o.aws.endpoints[service] ?? o.aws.endpoint;
    return {
      region: await region(),
      maxAttempts: o.aws.maxAttempts,
      // Standard, not adaptive: adaptive mode's client-side rate limiter starts a fresh
      // process at its minimum rate (0.5 requests/s), so every throttled retry waited about
      // 2 s; two IAM throttles outlasted ssh.deadline (5 s) and a login failed that the
      // third attempt would have let in (test/faults/ssh-keys.faults.test.ts). The agent's
      // processes are short-lived and make few calls: exponential backoff with jitter is enough.
      retryMode: 'standard' as const,
      // Without throwOnRequestTimeout the SDK only logs a warning when requestTimeout passes,
      // and a hung call waits forever.
      requestHandler: { connectionTimeout: o.aws.connectTimeoutMs, requestTimeout: o.aws.requestTimeoutMs, throwOnRequestTimeout: true },
      ...(endpoint ? { endpoint } : {}),
      ...(o.credentials ? { credentials: o.credentials } : {}),
    };
  };

  const cached = <T>(key: string, make: () => Promise<T>): Promise<T> => {
    let p = cache.get(key) as Promise<T> | undefined;
    if (!p) {
      p = make().then(registerResolvedCredentials);
      cache.set(key, p);
      // A failed creation (e.g. region lookup) may be retried by the next caller.
      p.catch(() => cache.delete(key));
    }
    return p;
  };

  return {
    region,
    ec2: () => cached('ec2', async () => named(new (await sdk.ec2()).EC2Client(await common('ec2')))),
    s3: () =>
      cached('s3', async () => {
        const { S3Client } = await sdk.s3();
        // No `Expect: 100-continue` (the SDK adds it to bodies of 2 MB and more): for such
        // requests the SDK leaves the keep-alive agent, so every 8 MiB backup part opened a
        // fresh connection and waited a round trip for `100 Continue` before sending. Without
        // it the 33 parts of a 256 MiB backup went up about 0.3 s faster against moto. A
        // refused request (auth, missing bucket) now costs one part's bytes on the wire.
        return named(new S3Client({ ...(await common('s3')), forcePathStyle: o.aws.s3ForcePathStyle, expectContinueHeader: false }));
      }),
    sns: () => cached('sns', async () => named(new (await sdk.sns()).SNSClient(await common('sns')))),
    iam: (credentials) => {
      const make = async () => {
        const c = await common('iam');
        return named(new (await sdk.iam()).IAMClient(credentials ? { ...c, credentials } : c));
      };
      return credentials ? make().then(registerResolvedCredentials) : cached('iam', make);
    },
    sts: () => cached('sts', async () => named(new (await sdk.sts()).STSClient(await common('sts')))),
    kms: () => cached('kms', async () => named(new (await sdk.kms()).KMSClient(await common('kms')))),
    autoscaling: () =>
      cached('autoscaling', async () => named(new (await sdk.autoscaling()).AutoScalingClient(await common('autoscaling')))),
    cloudformation: () =>
      cached('cloudformation', async () => named(new (await sdk.cloudformation()).CloudFormationClient(await common('cloudformation')))),
    route53: () => cached('route53', async () => named(new (await sdk.route53()).Route53Client(await common('route53')))),
  };
}

/**
 * A failed call carries what it was (`awsOperation: 'S3 UploadPart'`): an SDK error names
 * neither the service nor the call (a HEAD that failed says only `UnknownError`), and the
 * one line an operator reads must say what failed (asAgentError in errors.ts).
 */
type Handler = (args: unknown) => Promise<unknown>;
const nameFailedCalls = (next: Handler, context: { clientName?: string; commandName?: string }) => async (args: unknown) => {
  try {
    return await next(args);
  } catch (err) {
    if (err && typeof err === 'object' && !('awsOperation' in err)) {
      const service = (context.clientName ?? '').replace(/Client$/, '');
      Object.assign(err, { awsOperation: `${service} ${(context.commandName ?? 'call').replace(/Command$/, '')}`.trim() });
    }
    throw err;
  }
};

function named<C extends { middlewareStack: { add: (mw: never, o: { step: 'initialize'; name: string }) => void } }>(client: C): C {
  client.middlewareStack.add(nameFailedCalls as never, { step: 'initialize', name: 'zdtNameFailedCalls' });
  return client;
}
