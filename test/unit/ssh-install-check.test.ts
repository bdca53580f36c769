import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makePaths, type Paths } from '../../agent/host/paths.js';
import { checkSshdInstall, formatInstallChecks, readSshdConfig, SSHD_DROP_IN } from '../../agent/ssh/install-check.js';

let root: string;
let paths: Paths;

beforeEach(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-sshd-check-'));
  fs.chmodSync(root, 0o755);
  paths = makePaths(root);
  fs.mkdirSync(paths.at('/etc/ssh/sshd_config.d'), { recursive: true });
  fs.mkdirSync(paths.at('/usr/bin'), { recursive: true });
  fs.writeFileSync(paths.at('/usr/bin/zdt-agent'), '#!/bin/sh\n', { mode: 0o755 });
  fs.writeFileSync(paths.at('/etc/ssh/sshd_config'), 'Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication no\n');
});
afterEach(() => fs.rmSync(root, { recursive: true, force: true }));

const dropIn = (name: string, text: string) => fs.writeFileSync(paths.at(`/etc/ssh/sshd_config.d/${name}`), text);
const ZDT = 'AuthorizedKeysCommand /usr/bin/zdt-agent ssh-keys %u %f\nAuthorizedKeysCommandUser zdt-ssh\n';
const byName = (checks: ReturnType<typeof checkSshdInstall>) => Object.fromEntries(checks.map((c) => [c.name, c]));

describe('plan checks of a bastion sshd', () => {
  it('passes with the drop-in installed and a root-owned binary', () => {
    dropIn('01-zdt-agent.conf', ZDT);
    const checks = checkSshdInstall(paths);
    expect(checks.every((c) => c.ok), JSON.stringify(checks, null, 2)).toBe(true);
    expect(byName(checks)['sshd runs zdt-agent ssh-keys']?.detail).toBe('/etc/ssh/sshd_config.d/01-zdt-agent.conf:1: /usr/bin/zdt-agent ssh-keys %u %f');
  });

  it('flags an earlier AuthorizedKeysCommand: sshd uses the first one it reads', () => {
    dropIn('01-zdt-agent.conf', ZDT);
    dropIn('00-cloud.conf', 'AuthorizedKeysCommand /usr/local/bin/other %u\nAuthorizedKeysCommandUser nobody\n');
    const c = byName(checkSshdInstall(paths));
    expect(c['sshd runs zdt-agent ssh-keys']).toMatchObject({ ok: false });
    expect(c['sshd runs zdt-agent ssh-keys']?.detail).toMatch(/first AuthorizedKeysCommand it reads, \/etc\/ssh\/sshd_config.d\/00-cloud.conf:1/);
  });

  it('flags a line in sshd_config above the Include, and a missing drop-in', () => {
    expect(byName(checkSshdInstall(paths))['sshd runs zdt-agent ssh-keys']?.detail).toMatch(/no AuthorizedKeysCommand/);
    dropIn('01-zdt-agent.conf', ZDT);
    fs.writeFileSync(paths.at('/etc/ssh/sshd_config'), 'AuthorizedKeysCommand none\nInclude sshd_config.d/*.conf\n');
    expect(byName(checkSshdInstall(paths))['sshd runs zdt-agent ssh-keys']).toMatchObject({ ok: false });
  });

  it('flags an installed drop-in that sshd_config does not Include, and an unreadable sshd_config', () => {
    dropIn('01-zdt-agent.conf', ZDT);
    fs.writeFileSync(paths.at('/etc/ssh/sshd_config'), 'PasswordAuthentication no\n');
    const c = byName(checkSshdInstall(paths));
    expect(c['sshd reads the zdt-agent drop-in']).toMatchObject({ ok: false, detail: expect.stringMatching(/add 'Include \/etc\/ssh\/sshd_config.d\/\*.conf' near the top/) });
    expect(c['sshd runs zdt-agent ssh-keys']?.detail).toMatch(/no AuthorizedKeysCommand/);
    fs.rmSync(paths.at('/etc/ssh/sshd_config'));
    expect(byName(checkSshdInstall(paths))['sshd_config readable']).toMatchObject({ ok: false, detail: '/etc/ssh/sshd_config: ENOENT' });
  });

  it('prints one line per check under "bastion checks:", as plan shows them', () => {
    dropIn('01-zdt-agent.conf', ZDT);
    const text = formatInstallChecks(checkSshdInstall(paths));
    expect(text.split('\n')[0]).toBe('bastion checks:');
    expect(text).toContain(`  ok    sshd runs zdt-agent ssh-keys: ${SSHD_DROP_IN}:1: /usr/bin/zdt-agent ssh-keys %u %f`);
  });

  it('flags a command path sshd would refuse, a root command user, missing %f, and Match blocks', () => {
    dropIn('01-zdt-agent.conf', 'AuthorizedKeysCommand /usr/bin/zdt-agent ssh-keys %u\nAuthorizedKeysCommandUser root\nMatch User ops\n  AuthorizedKeysCommand /bin/true\n');
    fs.chmodSync(paths.at('/usr/bin'), 0o777);
    const c = byName(checkSshdInstall(paths));
    expect(c['ssh-keys arguments']?.detail).toMatch(/lacks %f/);
    expect(c['sshd accepts the command path']).toMatchObject({ ok: false, detail: expect.stringMatching(/\/usr\/bin has mode 777/) });
    expect(c['AuthorizedKeysCommandUser is unprivileged']).toMatchObject({ ok: false });
    expect(c['no AuthorizedKeysCommand in Match blocks']).toMatchObject({ ok: false });
  });

  it('follows symlinks to the real binary, as sshd does', () => {
    dropIn('01-zdt-agent.conf', ZDT);
    fs.mkdirSync(paths.at('/opt/zdt'), { recursive: true, mode: 0o777 });
    fs.chmodSync(paths.at('/opt/zdt'), 0o777);
    fs.renameSync(paths.at('/usr/bin/zdt-agent'), paths.at('/opt/zdt/zdt-agent'));
    fs.symlinkSync(paths.at('/opt/zdt/zdt-agent'), paths.at('/usr/bin/zdt-agent'));
    expect(byName(checkSshdInstall(paths))['sshd accepts the command path']?.detail).toMatch(/\/opt\/zdt has mode 777/);
  });

  it('reads keywords case-insensitively, with = and quotes', () => {
    dropIn('a.conf', 'authorizedkeyscommand="/usr/bin/zdt-agent" ssh-keys %u %f\n');
    expect(readSshdConfig(paths)[0]).toMatchObject({ keyword: 'authorizedkeyscommand', args: ['/usr/bin/zdt-agent', 'ssh-keys', '%u', '%f'] });
  });
});
