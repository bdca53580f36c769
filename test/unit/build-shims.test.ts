import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * scripts/build-binary.mjs puts a wrapper in front of every copy of string-width in the
 * binary: printable ASCII is answered as one column a character without loading the real
 * module. That is only right while each copy answers the same; this checks every copy.
 */
const ROOT = path.resolve(import.meta.dirname, '../..');

function stringWidthCopies(dir: string, out: string[] = []): string[] {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory()) continue;
    const sub = path.join(dir, entry.name);
    if (entry.name === 'string-width' && fs.existsSync(path.join(sub, 'package.json'))) out.push(sub);
    if (entry.name === 'node_modules' || entry.name.startsWith('@') || dir.endsWith('node_modules')) stringWidthCopies(sub, out);
  }
  return out;
}

describe('build shim: string-width for printable ASCII', () => {
  const copies = stringWidthCopies(path.join(ROOT, 'node_modules'));
  const printable = Array.from({ length: 0x7f - 0x20 }, (_, i) => String.fromCharCode(0x20 + i));

  it('finds the copies yargs, cliui and wrap-ansi use', () => {
    expect(copies.length).toBeGreaterThanOrEqual(1);
  });

  it.each(copies.map((c) => [path.relative(ROOT, c)]))('%s: one column per printable ASCII character', async (rel) => {
    const dir = path.join(ROOT, rel);
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { exports?: unknown; main?: string };
    const entry = typeof pkg.exports === 'string' ? pkg.exports : (pkg.main ?? 'index.js');
    const { default: stringWidth } = (await import(pathToFileURL(path.join(dir, entry)).href)) as { default: (s: string) => number };
    for (const c of printable) expect(stringWidth(c), JSON.stringify(c)).toBe(1);
    const line = `  zdt-agent boot   Bring this node up (run by cloud-init at every boot) [boolean] ${printable.join('')}`;
    expect(stringWidth(line)).toBe(line.length);
    expect(stringWidth('')).toBe(0);
  });
});
