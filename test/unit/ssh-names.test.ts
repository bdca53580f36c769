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

describe('ssh-keys argv (parsed without yargs on the hot path)', () => {
  it('reads USER and FINGERPRINT as strings, with the global options anywhere', () => {
    expect(parseSshKeysArgv(['0123', 'SHA256:x'])).toMatchObject({ user: '0123', fingerprint: 'SHA256:x' });
    expect(parseSshKeysArgv(['--root', '/r', 'alice', '--config=/c.yaml', '--log-level', 'debug'])).toMatchObject({
      user: 'alice',
      root: '/r',
      config: '/c.yaml',
      logLevel: 'debug',
    });
  });

  it('leaves everything else to the CLI (help, unknown options, wrong arity)', () => {
    for (const argv of [[], ['--help'], ['a', 'b', 'c'], ['--bogus', 'a'], ['--root'], ['--log-level', 'loud', 'a'], ['--', '-x'], ['-x']]) {
      expect(parseSshKeysArgv(argv)).toBeUndefined();
    }
  });
});
