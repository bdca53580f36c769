/**
 * argv -> command; exit codes; nothing else.
 *
 * `version` and `ssh-keys` are on hot paths (the benchmark floor and sshd's
 * AuthorizedKeysCommand), and so is a `boot` on a booted node; `watch` is a daemon whose idle
 * memory counts. The CLI module (yargs and every command) is loaded lazily and only for the
 * commands that need it.
 */
import { parseWatchArgv } from './argv.js';
import { ExitCode } from './errors.js';
import { captureProcessWarnings } from './log/logger.js';
import { redact, registerEnvironmentSecrets } from './log/redact.js';

// Before anything can print or log: no Node warning reaches stderr raw, and credentials handed
// in the environment are redacted wherever they show up.
captureProcessWarnings();
registerEnvironmentSecrets();

async function main(argv: string[]): Promise<number> {
  if (argv.length === 1 && (argv[0] === 'version' || argv[0] === '--version')) {
    const { runVersion } = await import('./commands/version.js');
    return runVersion();
  }
  if (argv.includes('ssh-keys')) {
    // sshd runs this for every key a client offers: answer from the key cache before yargs
    // and the CLI load (agent/ssh/warm.ts). A miss goes on to the full lookup, still without
    // yargs: %u and %f are data, and never reach an option parser.
    const warm = await import('./ssh/warm.js');
    const args = warm.parseSshKeysArgv(argv);
    if (args && warm.isSshKeysUsage(args)) {
      process.stderr.write(`zdt-agent: SshKeysUsage: ${args.usage}\n`);
      return ExitCode.usage;
    }
    if (args) {
      const code = await warm.answerFromCache(args);
      if (code !== undefined) return code;
      return (await import('./cli.js')).runSshKeysCommand(args);
    }
  }
  if (argv[0] === 'boot') {
    // A boot that already completed in this kernel boot from the same config sources is
    // answered from the state file before yargs, the config parsers and the AWS SDK load
    // (agent/boot/fast-path.ts). Anything else, --force included, runs the full boot below.
    const fast = await import('./boot/fast-path.js');
    const args = fast.parseBootArgv(argv.slice(1));
    const code = args && fast.answerFromState(args);
    if (code !== undefined) return code;
    // The full boot, with the arguments parsed here: no yargs on the way.
    if (args) return (await import('./cli.js')).runBootCommand(args);
  }
  if (argv.includes('watch')) {
    // The daemon, as the services start it: its own chunk (the idle loop: config, IMDS, state
    // file), without yargs, every other command and the AWS SDK, which an idle watcher would
    // keep in memory for nothing (docs/watch.md). --help and the unusual go to the CLI.
    const args = parseWatchArgv(argv);
    if (args) return (await import('./commands/watch.js')).runWatchCommand(args);
  }
  const { runCli } = await import('./cli.js');
  return runCli(argv);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    // The CLI maps every error to one line; reaching here is a bug, still one line.
    process.stderr.write(`zdt-agent: ${redact(err instanceof Error ? err.message : String(err))}\n`);
    process.exitCode = ExitCode.failed;
  },
);
