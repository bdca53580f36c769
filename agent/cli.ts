import yargs, { type Argv } from 'yargs';
import type { GlobalOptions } from './context.js';
import { AgentError, ConfigError, ExitCode, exitCodeOf } from './errors.js';
import { makePaths } from './host/paths.js';
import type { SshKeysArgs } from './ssh/warm.js';
import { LOG_FORMATS, LOG_LEVELS } from './log/logger.js';
import { redact } from './log/redact.js';

/**
 * The command-line interface. Each handler is small: it loads its command module lazily
 * (so `ssh-keys` never parses EC2 or S3 code) and returns an exit code.
 */

type Handler = (args: Record<string, unknown> & GlobalOptions) => Promise<number>;

const EPILOG = `Exit codes: 0 ok, 1 failed, 2 usage or config error (nothing was changed), 3 a deadline was exceeded.
Docs: README.md and docs/ (config reference: docs/config.md).`;

const bootHandler: Handler = async (a) => (await import('./commands/boot.js')).runBoot(a);

/**
 * `boot` with arguments main.ts has already parsed (boot/fast-path.ts parseBootArgv: only the
 * global options, nothing yargs would treat differently): the boot without yargs, which costs
 * a first boot about 15 ms (its set-up, and the help text it renders for every command run).
 */
export function runBootCommand(args: GlobalOptions): Promise<number> {
  return exitCodeOf(() => bootHandler({ ...args }), makePaths(args.root).logFile);
}

/**
 * `ssh-keys` on a key cache miss, with the arguments main.ts parsed (ssh/warm.ts
 * parseSshKeysArgv): USER and FINGERPRINT never go through yargs.
 */
export async function runSshKeysCommand(args: SshKeysArgs): Promise<number> {
  const { runSshKeysLookup } = await import('./ssh/lookup.js');
  return runSshKeysLookup(args);
}

export async function runCli(argv: string[]): Promise<number> {
  // yargs takes what follows `--` as arguments of no command and then runs none, exit 0:
  // no zdt-agent command takes free arguments, so `--` is always a mistake (or a trick).
  if (argv.includes('--')) {
    process.stderr.write("zdt-agent: '--' is not an option of zdt-agent\nRun 'zdt-agent --help' for usage.\n");
    return ExitCode.usage;
  }
  let code: number = ExitCode.ok;
  let usageError: string | undefined;
  const wrap =
    (h: Handler) =>
    async (args: Record<string, unknown>): Promise<void> => {
      if (usageError !== undefined) return;
      code = await exitCodeOf(() => h(args as Record<string, unknown> & GlobalOptions), makePaths(args.root as string | undefined).logFile);
    };

  const cli = yargs(argv)
    .scriptName('zdt-agent')
    .usage('$0 <command> [options]\n\nBrings Kubernetes nodes on AWS up and retires them without losing data.')
    .option('config', { type: 'string', describe: 'Config file merged last (highest precedence)', global: true })
    .option('root', { type: 'string', describe: 'Root prefix for every node path (tests, chroots)', global: true, hidden: true })
    .option('log-format', { choices: LOG_FORMATS, describe: 'Log line format', global: true })
    .option('log-level', { choices: LOG_LEVELS, describe: 'Lowest level logged', global: true })
    .command(
      'boot',
      'Bring this node up (run by cloud-init at every boot)',
      (y: Argv) =>
        y.option('force', {
          type: 'boolean',
          default: false,
          describe: 'Inspect every phase again, also when a boot already completed in this boot from the same config',
        }),
      wrap(bootHandler),
    )
    .command(
      'terminate',
      'Retire this node at shutdown: classify, drain, back up, notify (run by OpenRC)',
      (y: Argv) => y.option('event', { choices: ['reboot', 'stop', 'terminate', 'unknown'] as const, describe: 'Skip classification' }),
      wrap(async (a) => (await import('./commands/terminate.js')).runTerminateCommand(a)),
    )
    .command(
      'watch',
      'Act on interruption notices before the shutdown: poll IMDS, retire or cordon once per notice (a supervised daemon)',
      (y: Argv) =>
        y
          .option('max-polls', { type: 'number', hidden: true, describe: 'Stop after this many polls (tests, benchmarks)' })
          .option('print-config', { type: 'boolean', hidden: true, describe: "Print the watcher's settings from the validated config as JSON (the watcher runs this as a child)" }),
      wrap(async (a) => (a.printConfig ? (await import('./commands/watch-config.js')).printWatchConfig(a) : (await import('./commands/watch.js')).runWatch(a))),
    )
    .command(
      'ssh-keys <user> [fingerprint]',
      "Print the IAM SSH keys USER may log in with (sshd's AuthorizedKeysCommand; global options go before ssh-keys)",
      (y: Argv) =>
        y
          .positional('user', { type: 'string', demandOption: true, describe: 'Local login name (%u)' })
          .positional('fingerprint', { type: 'string', describe: 'Fingerprint of the offered key (%f), for the audit line' }),
      // main.ts runs every well-formed ssh-keys call itself; what reaches yargs had something
      // other than the global options before `ssh-keys`.
      wrap(async () => {
        throw new ConfigError('SshKeysUsage', 'only --config, --root, --log-level and --log-format may come before ssh-keys', {
          hint: "use 'zdt-agent [options] ssh-keys %u %f'",
        });
      }),
    )
    .command('ssh-users <action>', 'Local accounts for IAM users (bastions)', (y: Argv) =>
      y.positional('action', { choices: ['sync'] as const, demandOption: true, describe: 'sync: refresh the key cache and local users' }),
      wrap(async (a) => (await import('./commands/ssh-users.js')).runSshUsersSync(a)),
    )
    .command('etcd <action>', 'etcd backup to S3 and restore from it', (y: Argv) =>
      y
        .positional('action', { choices: ['backup', 'restore'] as const, demandOption: true })
        .option('from', { type: 'string', describe: "restore: 'latest' or an S3 key", default: 'latest' })
        .option('data-dir', { type: 'string', describe: 'restore: etcd data directory (must hold no member/ yet)' })
        .option('member-name', { type: 'string', describe: "restore: this member's etcd name (default: the backed-up member's)" })
        .option('peer-url', { type: 'string', describe: "restore: this member's peer URL (default: the backed-up member's)" })
        .option('initial-cluster', { type: 'string', describe: 'restore: --initial-cluster (default: this member alone)' })
        .option('cluster-token', { type: 'string', describe: 'restore: --initial-cluster-token (default: the cluster name)' })
        .option('pki-only', { type: 'boolean', describe: 'restore: PKI and kubeadm config only, no snapshot' }),
      wrap(async (a) => (await import('./commands/etcd.js')).runEtcd(a)),
    )
    .command('status', "Show what the last boot and terminate did, phase by phase, and the watcher's state", {}, wrap(async (a) => (await import('./commands/status.js')).runStatus(a)))
    .command(
      'plan',
      'Dry run: the phases boot and the steps terminate would run on this node, and why',
      (y: Argv) => y.option('event', { choices: ['reboot', 'stop', 'terminate', 'unknown'] as const, describe: 'Plan terminate for this event', default: 'terminate' }),
      wrap(async (a) => (await import('./commands/plan.js')).runPlan(a)),
    )
    .command('config <action>', 'Check the configuration', (y: Argv) =>
      y
        .positional('action', { choices: ['validate'] as const, demandOption: true })
        .option('instance', { type: 'boolean', default: false, describe: 'Also read user-data and tags from IMDS' }),
      wrap(async (a) => (await import('./commands/config.js')).runConfigValidate(a)),
    )
    .command('version', 'Print the version', {}, wrap(async () => (await import('./commands/version.js')).runVersion()))
    .demandCommand(1, 'Name a command; see --help')
    .strict()
    .epilog(EPILOG)
    .wrap(Math.min(110, process.stdout.columns || 100))
    .exitProcess(false)
    .version(false)
    .fail((msg, err) => {
      // yargs may report several problems of one command line; the first is the one to fix.
      usageError ??= redact(err ? (err instanceof AgentError ? err.oneLine() : err.message) : msg);
    });

  try {
    await cli.parseAsync();
  } catch (err) {
    usageError ??= err instanceof Error ? err.message : String(err);
  }
  if (usageError !== undefined) {
    process.stderr.write(`zdt-agent: ${usageError}\nRun 'zdt-agent --help' for usage.\n`);
    return ExitCode.usage;
  }
  return code;
}

/**
 * Build time only, never called by the agent: `scripts/lazy-chunk.cjs make-cache` runs this
 * after `--help` and before it writes the CLI chunk's V8 code cache, so that the cache also
 * holds the functions a first `boot` compiles lazily: the boot command's modules, YAML and zod
 * parsing a config, the EC2 client (its schemas alone are 0.6 MB of code; warming the S3
 * client too measured no better). Side-effect free: it writes nothing, connects nowhere and
 * sends no request (a client calls nothing before `send`; the region is given, so IMDS is not
 * asked). Under strace it reads only what node's DNS and TLS set-up read (/etc/resolv.conf,
 * /etc/nsswitch.conf, the CA bundle), not the config file, ~/.aws or the environment's files.
 */
export async function warmUpBootForCodeCache(): Promise<void> {
  await import('./commands/boot.js');
  const { parseYamlLayer, resolveConfig } = await import('./config/load.js');
  const config = resolveConfig([
    parseYamlLayer(
      'file',
      'warm-up',
      "cluster: { name: warm-up, kubernetesVersion: '1.34.0' }\nnode: { role: controller, controllerIndex: '00' }\naws: { region: us-east-1 }\n",
    ),
  ]);
  const { makeAws } = await import('./host/aws.js');
  const aws = makeAws({ aws: config.aws, region: () => Promise.resolve('us-east-1') });
  await aws.ec2();
}
