import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { describe, expect, it } from 'vitest';
import { configSchema, sshSchema, terminateSchema } from '../../agent/config/schema.js';

/**
 * What puts the binary on a node and calls it: OpenRC scripts, systemd units, periodic
 * entries, the sshd drop-in and the APKBUILD. Ordering is read from the files themselves.
 */

const ROOT = path.resolve(import.meta.dirname, '../..');
const read = (rel: string) => fs.readFileSync(path.join(ROOT, rel), 'utf8');
const PKG_VERSION: string = JSON.parse(read('package.json')).version;

/** The dependency calls of an OpenRC script's depend() block: { need: [...], after: [...] }. */
function openrcDepends(rel: string): Record<string, string[]> {
  const body = /^depend\(\)\s*\{\n([\s\S]*?)^\}/m.exec(read(rel))?.[1];
  if (body === undefined) throw new Error(`${rel} has no depend() block`);
  const deps: Record<string, string[]> = {};
  for (const line of body.split('\n')) {
    const words = line.replace(/#.*/, '').trim().split(/\s+/).filter(Boolean);
    const [kind, ...names] = words;
    if (kind) deps[kind] = [...(deps[kind] ?? []), ...names];
  }
  return deps;
}

/** The body of a shell function, for what a service runs. */
function shellFunction(rel: string, name: string): string | undefined {
  return new RegExp(`^${name}\\(\\)\\s*\\{\\n([\\s\\S]*?)^\\}`, 'm').exec(read(rel))?.[1];
}

/** A systemd unit as { 'Unit.After': [...], 'Service.ExecStop': [...] }; repeated keys add up. */
function unit(rel: string): Record<string, string[]> {
  const keys: Record<string, string[]> = {};
  let section = '';
  for (const line of read(rel).split('\n')) {
    const header = /^\[(\w+)\]$/.exec(line);
    if (header) section = header[1]!;
    const kv = /^(\w+)=(.*)$/.exec(line);
    if (kv) (keys[`${section}.${kv[1]}`] ??= []).push(kv[2]!);
  }
  return keys;
}
const words = (values: string[] | undefined) => (values ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean);

describe('OpenRC', () => {
  it('zdt-agent-boot runs boot once per boot, with the network, before the kubelet', () => {
    const deps = openrcDepends('openrc/zdt-agent-boot');
    expect(deps.need).toContain('net');
    expect(deps.before).toContain('kubelet');
    expect(shellFunction('openrc/zdt-agent-boot', 'start')).toMatch(/"\$zdt_agent" boot\b/);
    expect(shellFunction('openrc/zdt-agent-boot', 'stop')).toBeUndefined();
    expect(read('openrc/zdt-agent-boot')).toMatch(/^: "\$\{zdt_agent:=\/usr\/bin\/zdt-agent\}"$/m);
  });

  it('zdt-agent stops before the kubelet and the container runtimes, and before the network', () => {
    const deps = openrcDepends('openrc/zdt-agent');
    // "after: the service will start after these services and stop before these services".
    expect(deps.after).toEqual(expect.arrayContaining(['kubelet', 'containerd', 'crio']));
    // need keeps the network up until terminate is done.
    expect(deps.need).toContain('net');
    // Bastions and NAT hosts have no kubelet: it must not be needed, used or ordered after us.
    for (const kind of ['need', 'use', 'want', 'before']) {
      expect(deps[kind] ?? [], kind).not.toEqual(expect.arrayContaining(['kubelet']));
    }
  });

  it('zdt-agent runs terminate only when the system goes down, and never fails the shutdown', () => {
    const stop = shellFunction('openrc/zdt-agent', 'stop') ?? '';
    expect(stop).toMatch(/RC_GOINGDOWN/);
    expect(stop).toMatch(/"\$zdt_agent" terminate\b/);
    expect(stop.trim().split('\n').at(-1)?.trim()).toBe('return 0');
    expect(shellFunction('openrc/zdt-agent', 'start')?.trim()).toBe('return 0');
  });
});

describe('the watcher service (workers and controllers)', () => {
  it('OpenRC: zdt-agent watch under supervise-daemon, respawned for ever, with the network, stopped before zdt-agent', () => {
    const deps = openrcDepends('openrc/zdt-agent-watch');
    expect(deps.need).toContain('net');
    // after: starts after, STOPS BEFORE zdt-agent (whose stop runs terminate) and so before the kubelet.
    expect(deps.after).toEqual(expect.arrayContaining(['zdt-agent', 'zdt-agent-boot']));
    for (const kind of ['need', 'use', 'want', 'before']) expect(deps[kind] ?? [], kind).not.toEqual(expect.arrayContaining(['kubelet']));
    const script = read('openrc/zdt-agent-watch');
    expect(script).toMatch(/^supervisor=supervise-daemon$/m);
    expect(script).toMatch(/^command="\$zdt_agent"$/m);
    expect(script).toMatch(/^command_args="watch \$zdt_agent_opts"$/m);
    expect(script).toMatch(/^respawn_max=0$/m);
    expect(shellFunction('openrc/zdt-agent-watch', 'start')).toBeUndefined();
    expect(shellFunction('openrc/zdt-agent-watch', 'stop')).toBeUndefined();
  });

  it('systemd: Restart=always without a start limit, stopped before zdt-agent.service', () => {
    const u = unit('units/zdt-agent-watch.service');
    expect(u['Service.ExecStart']).toEqual(['/usr/bin/zdt-agent watch']);
    expect(u['Service.Restart']).toEqual(['always']);
    expect(u['Unit.StartLimitIntervalSec']).toEqual(['0']);
    expect(words(u['Unit.After'])).toEqual(expect.arrayContaining(['zdt-agent.service', 'network-online.target']));
    expect(u['Service.ExecStop']).toBeUndefined();
  });
});

describe('the ssh sync service (bastions)', () => {
  const cacheTtl = sshSchema.parse({ iamGroup: 'g' }).cacheTtl;

  it('zdt-agent-ssh-sync runs the sync loop under supervise-daemon, with the network, after boot', () => {
    const deps = openrcDepends('openrc/zdt-agent-ssh-sync');
    expect(deps.need).toContain('net');
    expect(deps.after).toContain('zdt-agent-boot');
    const script = read('openrc/zdt-agent-ssh-sync');
    expect(script).toMatch(/^supervisor=supervise-daemon$/m);
    expect(script).toMatch(/^command=\/usr\/libexec\/zdt-agent\/ssh-sync-loop$/m);
    expect(script).toMatch(/^command_args="\$ssh_sync_interval"$/m);
    // The interval leaves the cache (ssh.cacheTtl) time for a sync to finish before it is stale.
    const interval = Number(/^: "\$\{ssh_sync_interval:=(\d+)\}"$/m.exec(script)?.[1]);
    expect(interval).toBe(30);
    expect(interval).toBeLessThanOrEqual(cacheTtl / 2);
    expect(shellFunction('openrc/zdt-agent-ssh-sync', 'start')).toBeUndefined();
  });

  it('the loop syncs, then sleeps; stdout is dropped and only stderr reaches syslog', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-sync-loop-'));
    try {
      const calls = path.join(dir, 'calls');
      const logged = path.join(dir, 'logged');
      fs.writeFileSync(path.join(dir, 'zdt-agent'), `#!/bin/sh\necho "$*" >>'${calls}'\necho summary\necho 'WARN  something' >&2\n`, { mode: 0o755 });
      fs.writeFileSync(path.join(dir, 'logger'), `#!/bin/sh\necho "$*: $(cat)" >>'${logged}'\n`, { mode: 0o755 });
      const loop = spawn('sh', [path.join(ROOT, 'alpine/zdt-agent-ssh-sync-loop.sh'), '0.2'], {
        env: { ...process.env, PATH: `${dir}:${process.env.PATH}`, zdt_agent: path.join(dir, 'zdt-agent') },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      let output = '';
      loop.stdout.on('data', (d) => (output += d));
      loop.stderr.on('data', (d) => (output += d));
      await new Promise((r) => setTimeout(r, 1100));
      process.kill(-loop.pid!, 'SIGKILL');
      const runs = fs.readFileSync(calls, 'utf8').trim().split('\n');
      expect(runs.length).toBeGreaterThanOrEqual(3);
      expect(runs.length).toBeLessThanOrEqual(7);
      expect(new Set(runs)).toEqual(new Set(['ssh-users sync --log-level warn']));
      expect(fs.readFileSync(logged, 'utf8').trim().split('\n')[0]).toBe('-t zdt-agent-ssh-sync -p daemon.warning: WARN  something');
      expect(output).toBe('');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the loop waits 30 s by default and runs the installed binary', () => {
    const loop = read('alpine/zdt-agent-ssh-sync-loop.sh');
    expect(loop).toMatch(/^interval="\$\{1:-30\}"$/m);
    expect(loop).toMatch(/^: "\$\{zdt_agent:=\/usr\/bin\/zdt-agent\}"$/m);
  });

  it('systemd: the timer starts the sync 10 s after boot and every 30 s, to the second', () => {
    const t = unit('units/zdt-agent-ssh-sync.timer');
    expect(t['Timer.OnBootSec']).toEqual(['10s']);
    expect(t['Timer.OnUnitActiveSec']).toEqual(['30s']);
    expect(t['Timer.AccuracySec']).toEqual(['1s']);
    expect(t['Timer.OnCalendar']).toBeUndefined();
    const u = unit('units/zdt-agent-ssh-sync.service');
    expect(u['Service.Type']).toEqual(['oneshot']);
    expect(u['Service.ExecStart']).toEqual(['/usr/bin/zdt-agent ssh-users sync --log-level warn']);
    expect(u['Service.StandardOutput']).toEqual(['null']);
    expect(words(u['Unit.After'])).toEqual(expect.arrayContaining(['network-online.target', 'zdt-agent-boot.service']));
  });
});

describe('systemd units', () => {
  it('zdt-agent-boot.service is a oneshot after the network and before the kubelet', () => {
    const u = unit('units/zdt-agent-boot.service');
    expect(u['Service.Type']).toEqual(['oneshot']);
    expect(u['Service.ExecStart']).toEqual(['/usr/bin/zdt-agent boot']);
    expect(words(u['Unit.After'])).toContain('network-online.target');
    expect(words(u['Unit.Before'])).toContain('kubelet.service');
  });

  it('zdt-agent.service stops before the kubelet and the runtimes, with time for the whole terminate budget', () => {
    const u = unit('units/zdt-agent.service');
    // Stop order is the reverse of start order: After= the kubelet means stopped before it.
    expect(words(u['Unit.After'])).toEqual(expect.arrayContaining(['kubelet.service', 'containerd.service', 'crio.service', 'network-online.target']));
    expect(words(u['Unit.Before'])).not.toContain('kubelet.service');
    expect(u['Unit.Requires'] ?? []).toEqual([]);
    expect(u['Service.RemainAfterExit']).toEqual(['yes']);
    expect(u['Service.ExecStop']?.join('\n')).toMatch(/\/usr\/bin\/zdt-agent terminate'?$/);
    const defaultBudget = terminateSchema.parse({}).budget;
    expect(Number(u['Service.TimeoutStopSec']?.[0])).toBeGreaterThan(defaultBudget);
  });

  it('a timer backs etcd up hourly', () => {
    expect(unit('units/zdt-agent-etcd-backup.timer')['Timer.OnCalendar']).toEqual(['hourly']);
    expect(unit('units/zdt-agent-etcd-backup.service')['Service.ExecStart']).toEqual(['/usr/bin/zdt-agent etcd backup']);
  });
});

describe('alpine/APKBUILD', () => {
  /** The APKBUILD's variables, as abuild sees them after sourcing it. */
  function apkbuildVars(): Record<string, string | undefined> {
    const names = ['pkgname', 'pkgver', 'pkgrel', 'pkgdesc', 'url', 'arch', 'license', 'depends', 'makedepends', 'source', 'sha512sums', 'install', 'pkgusers', 'options'];
    const script = `. ./APKBUILD >/dev/null; for v in ${names.join(' ')}; do eval "if [ \\"\\\${$v+set}\\" = set ]; then printf '%s=%s\\\\0' \\"$v\\" \\"\\\$$v\\"; fi"; done`;
    const r = spawnSync('sh', ['-c', script], { cwd: path.join(ROOT, 'alpine'), encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const vars: Record<string, string | undefined> = {};
    for (const entry of r.stdout.split('\0').filter(Boolean)) {
      const eq = entry.indexOf('=');
      vars[entry.slice(0, eq)] = entry.slice(eq + 1);
    }
    return vars;
  }

  /** `install -D… SRC "$pkgdir"/DEST` lines of package(): [SRC, DEST]. */
  function installed(): [string, string][] {
    const body = shellFunction('alpine/APKBUILD', 'package') ?? '';
    return [...body.matchAll(/^\s*install\s+-D\S*\s+(\S+)\s+"\$pkgdir"(\S+)/gm)].map((m) => [m[1]!, m[2]!]);
  }

  it('declares the variables abuild needs, at the package.json version', () => {
    const v = apkbuildVars();
    expect(v.pkgname).toBe('zdt-agent');
    expect(v.pkgver).toBe(PKG_VERSION);
    expect(v.pkgrel).toMatch(/^\d+$/);
    expect(v.pkgdesc?.length).toBeGreaterThan(0);
    expect(v.pkgdesc!.length).toBeLessThanOrEqual(128);
    expect(v.url).toMatch(/^https?:\/\//);
    expect(v.arch?.split(/\s+/)).toEqual(expect.arrayContaining(['x86_64', 'aarch64']));
    expect(v.license).toBe(JSON.parse(read('package.json')).license);
    expect(v.depends).toBeDefined();
    expect(v.makedepends?.split(/\s+/).map((d) => d.replace(/[<>=~].*/, ''))).toEqual(expect.arrayContaining(['nodejs', 'npm']));
    expect(v.pkgusers).toBe('zdt-ssh');
  });

  it('has a checksum for every source, and every local source exists', () => {
    const v = apkbuildVars();
    const sources = (v.source ?? '').split(/\s+/).filter(Boolean);
    const sums = (v.sha512sums ?? '').split('\n').map((l) => l.trim()).filter(Boolean);
    for (const source of sources) {
      const file = source.replace(/^.*::/, '');
      expect(sums.some((line) => line.endsWith(`  ${path.basename(file)}`)), `sha512sums lacks ${file}`).toBe(true);
      if (!/^[a-z]+:\/\//.test(file)) expect(fs.existsSync(path.join(ROOT, 'alpine', file)), file).toBe(true);
    }
    expect(fs.existsSync(path.join(ROOT, 'alpine', v.install ?? 'missing'))).toBe(true);
  });

  it('installs only files that exist in the repository (the binary comes from the build)', () => {
    const files = installed();
    expect(files.map(([, dest]) => dest)).toEqual(
      expect.arrayContaining([
        '/usr/bin/zdt-agent',
        '/etc/init.d/zdt-agent-boot',
        '/etc/init.d/zdt-agent',
        '/etc/init.d/zdt-agent-watch',
        '/etc/init.d/zdt-agent-ssh-sync',
        '/usr/libexec/zdt-agent/ssh-sync-loop',
        '/etc/ssh/sshd_config.d/01-zdt-agent.conf',
        '/etc/zdt-agent/config.yaml',
      ]),
    );
    for (const [src] of files) {
      if (src === 'dist/zdt-agent') {
        expect(shellFunction('alpine/APKBUILD', 'build')).toMatch(/node scripts\/build-binary\.mjs --base-node/);
        continue;
      }
      expect(fs.existsSync(path.join(ROOT, src)), `${src} is installed but not in the repository`).toBe(true);
    }
  });

  it('puts the hourly backup where busybox run-parts runs it; the ssh sync is a service, not a periodic job', () => {
    const dests = Object.fromEntries(installed().map(([src, dest]) => [src, dest]));
    expect(dests['alpine/zdt-agent-etcd-backup.periodic']).toMatch(/^\/etc\/periodic\/hourly\//);
    const periodic = Object.values(dests).filter((d) => d.startsWith('/etc/periodic/'));
    expect(periodic).toEqual(['/etc/periodic/hourly/zdt-agent-etcd-backup']);
    for (const dest of periodic) {
      // run-parts skips names with anything but letters, digits, '_' and '-'.
      expect(path.basename(dest)).toMatch(/^[A-Za-z0-9_-]+$/);
    }
    expect(read('alpine/zdt-agent-etcd-backup.periodic')).toMatch(/^exec \/usr\/bin\/zdt-agent etcd backup$/m);
    expect(dests['openrc/zdt-agent-ssh-sync']).toBe('/etc/init.d/zdt-agent-ssh-sync');
    expect(dests['alpine/zdt-agent-ssh-sync-loop.sh']).toBe('/usr/libexec/zdt-agent/ssh-sync-loop');
  });

  it('installs scripts executable and the sshd drop-in and config readable only', () => {
    const body = shellFunction('alpine/APKBUILD', 'package') ?? '';
    const modes = Object.fromEntries([...body.matchAll(/^\s*install\s+-D(?:m(\d+))?\s+\S+\s+"\$pkgdir"(\S+)/gm)].map((m) => [m[2]!, m[1]]));
    for (const dest of ['/usr/bin/zdt-agent', '/etc/init.d/zdt-agent-ssh-sync', '/usr/libexec/zdt-agent/ssh-sync-loop']) expect(modes[dest], dest).toBe('755');
    expect(modes['/etc/ssh/sshd_config.d/01-zdt-agent.conf']).toBe('644');
  });

  it('names the sshd drop-in to be read before the usual ones: sshd uses the first AuthorizedKeysCommand', () => {
    const dropIns = installed().filter(([, dest]) => dest.startsWith('/etc/ssh/sshd_config.d/'));
    expect(dropIns).toEqual([['alpine/sshd_config.d/01-zdt-agent.conf', '/etc/ssh/sshd_config.d/01-zdt-agent.conf']]);
    // glob(3) order, as sshd's Include reads them: ours before cloud images' and admins' drop-ins.
    const name = path.basename(dropIns[0]![1]);
    expect([name, '50-cloud-init.conf', '10-admin.conf', 'zz-local.conf', '02-x.conf'].sort()[0]).toBe(name);
    expect(fs.readdirSync(path.join(ROOT, 'alpine/sshd_config.d'))).toEqual(['01-zdt-agent.conf']);
  });

  it('lets sshd ask the installed binary for keys, as the locked user the pre-install creates', () => {
    const conf = read('alpine/sshd_config.d/01-zdt-agent.conf');
    expect(conf).toMatch(/^AuthorizedKeysCommand \/usr\/bin\/zdt-agent ssh-keys %u %f$/m);
    expect(conf).toMatch(/^AuthorizedKeysCommandUser zdt-ssh$/m);
    const preInstall = read('alpine/zdt-agent.pre-install');
    expect(preInstall).toMatch(/^adduser -S -D -H .*-s \/sbin\/nologin .*zdt-ssh/m);
  });
});

describe('alpine/config.yaml', () => {
  const text = read('alpine/config.yaml');
  // '##' lines explain, '# ' lines are settings.
  const uncommented = text
    .split('\n')
    .filter((l) => !l.startsWith('##'))
    .map((l) => (l.startsWith('# ') ? l.slice(2) : l))
    .join('\n');

  it('sets nothing: every line is a comment', () => {
    expect(text.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('#'))).toEqual([]);
  });

  it('shows valid settings: each section, uncommented, passes the schema', () => {
    const settings = parseYaml(uncommented) as Record<string, unknown>;
    for (const [section, value] of Object.entries(settings)) {
      const schema = configSchema.shape[section as keyof typeof configSchema.shape];
      expect(schema, `unknown section ${section}`).toBeDefined();
      const result = schema.safeParse(value);
      expect(result.error?.issues, section).toBeUndefined();
    }
  });

  it('shows every key of the schema', () => {
    const shown = keyPaths(parseYaml(uncommented));
    const missing = schemaKeyPaths(configSchema).filter((k) => !shown.includes(k));
    expect(missing, 'add these to alpine/config.yaml').toEqual([]);
  });
});

describe('scripts/lint-init.sh', () => {
  const shellcheck = spawnSync('sh', ['-c', 'command -v shellcheck'], { encoding: 'utf8' }).status === 0;
  it.skipIf(!shellcheck)('passes shellcheck and systemd-analyze verify (skipped without shellcheck)', () => {
    const r = spawnSync('bash', [path.join(ROOT, 'scripts/lint-init.sh')], { encoding: 'utf8' });
    expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
  });
});

function keyPaths(value: unknown, prefix = ''): string[] {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return [];
  return Object.entries(value).flatMap(([k, v]) => [`${prefix}${k}`, ...keyPaths(v, `${prefix}${k}.`)]);
}

/** Key paths of the schema's objects; records and arrays are leaves. */
function schemaKeyPaths(schema: z.ZodType, prefix = ''): string[] {
  let s = schema as z.ZodType & { def: { type: string; innerType?: z.ZodType; in?: z.ZodType; shape?: Record<string, z.ZodType> } };
  while (s.def.innerType ?? (s.def.type === 'pipe' ? s.def.in : undefined)) s = (s.def.innerType ?? s.def.in) as typeof s;
  if (s.def.type !== 'object' || !s.def.shape) return [];
  return Object.entries(s.def.shape).flatMap(([k, v]) => [`${prefix}${k}`, ...schemaKeyPaths(v, `${prefix}${k}.`)]);
}
