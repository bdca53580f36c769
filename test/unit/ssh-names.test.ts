import { describe, expect, it } from 'vitest';
import { iamNameFor, localNameFor, localNameProblem, membersByLogin } from '../../agent/ssh/names.js';
import { parseSshKeysArgv } from '../../agent/ssh/warm.js';

describe('IAM user name <-> login name', () => {
  const table: Array<[iam: string, local: string]> = [
    ['alice', 'alice'],
    ['Alice.Smith', 'Alice.Smith'],
    ['jane.doe@example.com', 'jane.doe.at.example.com'],
    ['ci+deploy', 'ci.plus.deploy'],
    ['a=b,c', 'a.equal.b.comma.c'],
    ['x_y-z', 'x_y-z'],
    ['0123', '0123'],
  ];

  it.each(table)('%s <-> %s', (iam, local) => {
    expect(localNameFor(iam)).toBe(local);
    expect(iamNameFor(local)).toBe(iam);
  });

  it('an IAM user whose login would exceed 32 characters or start with a dot has none', () => {
    expect(localNameFor('a'.repeat(32))).toBe('a'.repeat(32));
    expect(localNameFor('a'.repeat(33))).toBeUndefined();
    expect(localNameFor('jane.doe@example-corp.com')).toBe('jane.doe.at.example-corp.com');
    expect(localNameFor('jane.doe@example-corporation.com')).toBeUndefined(); // 32 characters, 35 as a login
    expect(localNameFor('@home')).toBeUndefined(); // .at.home starts with a dot
    expect(localNameFor('+x')).toBeUndefined();
    expect(localNameFor('bad name')).toBeUndefined();
  });

  it('members that map to one login are ambiguous and get no login', () => {
    const r = membersByLogin(['a+b', 'a.plus.b', 'carol', 'x'.repeat(40)]);
    expect([...r.logins]).toEqual([['carol', 'carol']]);
    expect(r.ambiguous.get('a.plus.b')).toEqual(['a+b', 'a.plus.b']);
    expect(r.unmappable).toEqual(['x'.repeat(40)]);
  });
});

describe('login names refused before any lookup', () => {
  const bad: Array<[string, string]> = [
    ['', 'empty'],
    ['a'.repeat(33), 'too-long'],
    ['../etc/passwd', 'leading-dot-or-dash'],
    ['.', 'leading-dot-or-dash'],
    ['..', 'leading-dot-or-dash'],
    ['-oProxyCommand=x', 'leading-dot-or-dash'],
    ['a/b', 'characters'],
    ['alice\n', 'characters'],
    ['alice bob', 'characters'],
    ['al+ice', 'characters'],
    ['al@ice', 'characters'],
    ['alice$', 'characters'],
    ['ålice', 'characters'],
    ['a\u0000b', 'characters'],
    ['*', 'characters'],
  ];
  it.each(bad)('%j: %s', (name, problem) => {
    expect(localNameProblem(name)).toBe(problem);
  });

  it('valid names pass', () => {
    for (const n of ['alice', 'a', '_svc', 'jane.doe.at.example.com', '0123', 'A-b_c.d', 'a'.repeat(32)]) expect(localNameProblem(n)).toBeUndefined();
  });
});

describe('ssh-keys argv (parsed without yargs, on the hot path and the cold one)', () => {
  it('reads the global options before ssh-keys, then USER and FINGERPRINT as strings', () => {
    expect(parseSshKeysArgv(['ssh-keys', '0123', 'SHA256:x'])).toEqual({ user: '0123', fingerprint: 'SHA256:x' });
    expect(parseSshKeysArgv(['--root', '/r', '--config=/c.yaml', '--log-level', 'debug', 'ssh-keys', 'alice'])).toMatchObject({
      user: 'alice',
      root: '/r',
      config: '/c.yaml',
      logLevel: 'debug',
    });
  });

  // sshd's %u and %f are whatever the client typed: they are never options.
  const data: Array<[string, string[]]> = [
    ['--help', ['--help']],
    ['-x', ['-x', 'SHA256:x']],
    ['--config=FILE', ['--config=/tmp/evil.yaml', '--root=/tmp']],
    ['--', ['--', '-x']],
    ['empty', ['', '']],
    ['ssh-keys again', ['ssh-keys', 'ssh-keys']],
    ['control characters', ['a\nb\r', '\x1b[2J']],
    ['very long', ['a'.repeat(100_000)]],
  ];
  it.each(data)('%s after ssh-keys is the user and fingerprint', (_, rest) => {
    const parsed = parseSshKeysArgv(['ssh-keys', ...rest]);
    expect(parsed).toEqual({ user: rest[0], fingerprint: rest[1] });
  });

  it('a wrong number of arguments after ssh-keys, or a bad option before it, is a usage error', () => {
    for (const argv of [['ssh-keys'], ['ssh-keys', 'a', 'b', 'c'], ['ssh-keys', '--root', '/r', 'alice'], ['--log-level', 'loud', 'ssh-keys', 'a']]) {
      expect(parseSshKeysArgv(argv), JSON.stringify(argv)).toHaveProperty('usage');
    }
  });

  it('leaves other command lines to the CLI', () => {
    for (const argv of [[], ['--help'], ['boot', 'ssh-keys'], ['--bogus', 'ssh-keys', 'a'], ['-x', 'ssh-keys', 'a'], ['--', 'ssh-keys', 'a'], ['--root', 'ssh-keys', 'a']]) {
      expect(parseSshKeysArgv(argv), JSON.stringify(argv)).toBeUndefined();
    }
    // An option's value is a value, even when it reads ssh-keys.
    expect(parseSshKeysArgv(['--config', 'ssh-keys', 'config', 'validate'])).toBeUndefined();
    expect(parseSshKeysArgv(['--config', 'ssh-keys', 'ssh-keys', 'alice'])).toEqual({ user: 'alice', config: 'ssh-keys' });
  });
});
