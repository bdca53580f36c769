import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../agent/log/logger.js';
import { formatState, readState, writeState, emptyState } from '../../agent/log/state.js';

const dirs: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-state-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

describe('state file', () => {
  it('is written atomically, 0600, redacted, and read back', () => {
    const file = path.join(tmp(), 'var/lib/zdt-agent/state.json');
    const s = emptyState('1.0.0');
    s.boot = { startedAt: 't0', result: 'failed', phases: { 'worker-join': { result: 'failed', startedAt: 't0', durationMs: 1234, error: 'kubeadm join --token abcdef.0123456789abcdef failed' } } };
    s.facts.volumeId = 'vol-1';
    writeState(file, s);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(fs.readFileSync(file, 'utf8')).not.toContain('0123456789abcdef');
    expect(fs.readdirSync(path.dirname(file))).toEqual(['state.json']); // no temp file left
    const back = readState(file, '1.0.0');
    expect(back.facts.volumeId).toBe('vol-1');
    const text = formatState(back);
    expect(text).toMatch(/boot: failed/);
    expect(text).toMatch(/worker-join\s+failed\s+1\.23s/);
    expect(text).toMatch(/terminate: never ran/);
  });

  it('a missing or corrupt state file reads as empty', () => {
    const dir = tmp();
    expect(readState(path.join(dir, 'none.json'), 'v').facts).toEqual({});
    fs.writeFileSync(path.join(dir, 'bad.json'), '{"schema":1,');
    expect(readState(path.join(dir, 'bad.json'), 'v').boot).toBeUndefined();
  });
});

describe('logger', () => {
  it('writes one line per event in human and JSON format, with phase and fields', () => {
    const dir = tmp();
    const file = path.join(dir, 'log/zdt-agent.log');
    const now = () => new Date('2026-01-01T00:00:00Z');
    const human = createLogger({ file, console: null, now });
    human.child('etcd-volume').info('attached', { volume: 'vol-1', ms: 12, note: 'two words' });
    const json = createLogger({ file, console: null, format: 'json', now });
    json.child('boot').warn('slow', { ms: 5 });
    json.debug('dropped');
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    expect(lines[0]).toBe('2026-01-01T00:00:00.000Z INFO  [etcd-volume] attached volume=vol-1 ms=12 note="two words"');
    expect(JSON.parse(lines[1]!)).toEqual({ ts: '2026-01-01T00:00:00.000Z', level: 'warn', msg: 'slow', phase: 'boot', ms: 5 });
    expect(lines).toHaveLength(2);
    expect(human.tail(5)).toHaveLength(1);
  });
});
