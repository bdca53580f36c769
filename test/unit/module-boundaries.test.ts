import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * The flows (boot, terminate, watch) share code through modules all of them use (node.ts,
 * node-rbac.ts, host/, log/, notify/), never by importing each other; and no flow depends on
 * the command line (context.ts holds the options type, cli.ts only parses).
 */
const agent = path.resolve(__dirname, '../../agent');

function importsOf(dir: string): Array<{ file: string; spec: string }> {
  const out: Array<{ file: string; spec: string }> = [];
  for (const name of fs.readdirSync(dir)) {
    const file = path.join(dir, name);
    if (fs.statSync(file).isDirectory()) out.push(...importsOf(file));
    else if (name.endsWith('.ts')) {
      for (const m of fs.readFileSync(file, 'utf8').matchAll(/(?:from|import\()\s*'([^']+)'/g)) out.push({ file, spec: path.resolve(path.dirname(file), m[1] as string) });
    }
  }
  return out;
}

describe('module boundaries', () => {
  for (const flow of ['boot', 'terminate', 'watch']) {
    it(`${flow}/ imports no other flow and not the CLI`, () => {
      const others = ['boot', 'terminate', 'watch', 'commands'].filter((f) => f !== flow).map((f) => `${path.join(agent, f)}/`);
      const bad = importsOf(path.join(agent, flow))
        .filter((i) => i.spec.startsWith(path.join(agent, '')) && (others.some((o) => i.spec.startsWith(o)) || i.spec === path.join(agent, 'cli.js')))
        .map((i) => `${path.relative(agent, i.file)} -> ${path.relative(agent, i.spec)}`);
      expect(bad).toEqual([]);
    });
  }

  it('context.ts does not import cli.ts', () => {
    expect(importsOf(agent).filter((i) => path.basename(i.file) === 'context.ts' && i.spec === path.join(agent, 'cli.js'))).toEqual([]);
  });
});
