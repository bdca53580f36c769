import { describe, expect, it } from 'vitest';
import { parseWatchArgv } from '../../agent/argv.js';

/** The `watch` command lines main.ts answers itself (its own chunk, no yargs); the rest go to the CLI. */
describe('parseWatchArgv', () => {
  it('reads the global options before and after the command, and --max-polls', () => {
    expect(parseWatchArgv(['watch'])).toEqual({});
    expect(parseWatchArgv(['--log-level', 'debug', 'watch', '--root=/r', '--config', '/c.yaml', '--log-format=json', '--max-polls', '7'])).toEqual({
      root: '/r',
      config: '/c.yaml',
      logLevel: 'debug',
      logFormat: 'json',
      maxPolls: 7,
    });
  });

  it('leaves to the CLI what it does not vouch for', () => {
    for (const argv of [
      ['watch', '--help'],
      ['watch', '--print-config'],
      ['watch', '--max-polls', '1e9'],
      ['watch', '--max-polls'],
      ['watch', '--root', '--config', '/c'],
      ['watch', '--log-level', 'loud'],
      ['watch', 'watch'],
      ['--config', 'watch'],
      ['watch', '--maxPolls', '3'],
      ['status'],
    ]) {
      expect(parseWatchArgv(argv), argv.join(' ')).toBeUndefined();
    }
  });
});
