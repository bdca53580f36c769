import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { readFileLayer } from '../../agent/config/load.js';
import { USER_DATA_MAX_DECOMPRESSED_BYTES, extractAgentPart } from '../../agent/config/userdata.js';
import { AgentError, ConfigError } from '../../agent/errors.js';
import { makeAws, regionFromEnv } from '../../agent/host/aws.js';
import { CONFIG_FILE_MAX_BYTES } from '../../agent/host/bounded-file.js';
import { readLocalSources } from '../../agent/boot/fast-path.js';
import { makePaths } from '../../agent/host/paths.js';
import { awsSchema } from '../../agent/config/schema.js';

/** Input read from files and IMDS is bounded and typed: one clear error, never a hang or a crash. */

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-bounded-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function errorOf(f: () => unknown): AgentError {
  try {
    f();
  } catch (err) {
    if (err instanceof AgentError) return err;
    throw err;
  }
  throw new Error('expected an AgentError');
}

describe('config files: regular files only, at most 256 KiB', () => {
  const fifo = path.join(dir, 'fifo.yaml');
  execFileSync('mkfifo', [fifo]);
  const big = path.join(dir, 'big.yaml');
  fs.writeFileSync(big, `# ${'x'.repeat(CONFIG_FILE_MAX_BYTES)}\n`);
  const sock = path.join(dir, 'sock.yaml');
  const server = net.createServer().listen(sock);
  afterAll(() => void server.close());

  it.each([
    ['a FIFO nobody writes to', fifo, `ConfigUnreadable: ${fifo} is a FIFO, not a regular file; name a regular YAML file`],
    ['a character device', '/dev/zero', 'ConfigUnreadable: /dev/zero is a character device, not a regular file; name a regular YAML file'],
    ['a directory', dir, `ConfigUnreadable: ${dir} is a directory, not a regular file; name a regular YAML file`],
    ['a socket', sock, `ConfigUnreadable: cannot read ${sock}: ENXIO; check the path given to --config`],
    ['too large', big, `ConfigUnreadable: ${big} is larger than 256 KiB, the limit; check the path: a config file is a few KiB of YAML`],
    ['missing', path.join(dir, 'nope.yaml'), `ConfigUnreadable: cannot read ${path.join(dir, 'nope.yaml')}: ENOENT; check the path given to --config`],
  ])('--config naming %s: exit 2 at once', (_, file, line) => {
    const e = errorOf(() => readFileLayer('--config', file, true));
    expect([e.oneLine(), e.exitCode]).toEqual([line, 2]);
  });

  it('the AMI file may be absent, but not a FIFO', () => {
    expect(readFileLayer('file', path.join(dir, 'absent.yaml'), false)).toBeUndefined();
    expect(errorOf(() => readFileLayer('file', fifo, false)).code).toBe('ConfigUnreadable');
  });

  it("boot's fast path does not block on a FIFO either: it leaves it to the full boot", () => {
    const paths = makePaths(dir);
    expect(readLocalSources(paths, fifo)).toBeUndefined();
    fs.mkdirSync(path.dirname(paths.configFile), { recursive: true });
    execFileSync('mkfifo', [paths.configFile]);
    expect(readLocalSources(paths, undefined)).toBeUndefined();
  });
});

describe('user-data: gzip is decompressed up to 1 MiB', () => {
  it('a gzip bomb is a user-data error, exit 2', async () => {
    const bomb = gzipSync(Buffer.alloc(64 * 1024 * 1024, 0x20));
    expect(bomb.length).toBeLessThan(128 * 1024);
    const e = await extractAgentPart(bomb).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as ConfigError).oneLine()).toBe(
      'UserDataInvalid: user-data decompresses to more than 1024 KiB; check the launch template user-data: EC2 allows 16 KiB, and its zdt-agent part is a few lines of YAML',
    );
  });

  it('just under the cap is read', async () => {
    const text = `#zdt-agent\n# ${'x'.repeat(USER_DATA_MAX_DECOMPRESSED_BYTES - 100)}\nnode: { role: worker }\n`;
    expect(await extractAgentPart(gzipSync(Buffer.from(text)))).toBe(text);
  });

  it('a truncated gzip stream is a user-data error', async () => {
    const cut = gzipSync(Buffer.from('#zdt-agent\nnode: { role: worker }\n')).subarray(0, 12);
    await expect(extractAgentPart(cut)).rejects.toMatchObject({ code: 'UserDataInvalid', exitCode: 2 });
  });
});

describe('the region: aws.region, AWS_REGION, AWS_DEFAULT_REGION, then IMDS', () => {
  const aws = (region?: string) => awsSchema.parse(region ? { region } : {});
  const imdsNotAsked = () => Promise.reject(new Error('IMDS asked'));

  it.each<[{ region?: string; env: Record<string, string> }, string]>([
    [{ region: 'eu-west-1', env: { AWS_REGION: 'us-east-1', AWS_DEFAULT_REGION: 'us-east-2' } }, 'eu-west-1'],
    [{ env: { AWS_REGION: 'us-east-1', AWS_DEFAULT_REGION: 'us-east-2' } }, 'us-east-1'],
    [{ env: { AWS_DEFAULT_REGION: 'us-east-2' } }, 'us-east-2'],
    [{ env: { AWS_REGION: '', AWS_DEFAULT_REGION: 'us-east-2' } }, 'us-east-2'],
  ])('%j -> %s, without asking IMDS', async (c, expected) => {
    const saved = { AWS_REGION: process.env.AWS_REGION, AWS_DEFAULT_REGION: process.env.AWS_DEFAULT_REGION };
    delete process.env.AWS_REGION;
    delete process.env.AWS_DEFAULT_REGION;
    Object.assign(process.env, c.env);
    try {
      expect(await makeAws({ aws: aws(c.region), region: imdsNotAsked }).region()).toBe(expected);
    } finally {
      for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });

  it('IMDS only when neither config nor environment names one', () => {
    expect(regionFromEnv({})).toBeUndefined();
  });

  it('an environment region that is no region is a config error, not a host name', () => {
    const e = errorOf(() => regionFromEnv({ AWS_REGION: 'evil.example.com/x\r\n' }));
    expect([e.code, e.exitCode]).toEqual(['RegionInvalid', 2]);
    expect(e.oneLine()).toBe('RegionInvalid: AWS_REGION is not an AWS region ("evil.example.com/x\\r\\n"); set AWS_REGION to a region such as eu-central-1, or unset it');
  });
});
