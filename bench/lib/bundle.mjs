import fs from 'node:fs';
import path from 'node:path';
import * as esbuild from 'esbuild';

const ROOT = path.resolve(import.meta.dirname, '../..');

/**
 * Imports TypeScript sources of the repository (testbed helpers, agent modules) into a
 * benchmark: `lines` are export statements relative to the repository root, bundled with
 * esbuild into .cache/bench/ (npm packages stay external), imported, and the bundle removed.
 */
export async function importTs(name, lines) {
  const outfile = path.join(ROOT, `.cache/bench/${name}-${process.pid}.mjs`);
  await esbuild.build({
    stdin: { contents: lines.join('\n'), resolveDir: ROOT, loader: 'ts' },
    bundle: true,
    platform: 'node',
    format: 'esm',
    packages: 'external',
    outfile,
    logLevel: 'error',
  });
  try {
    return await import(outfile);
  } finally {
    fs.rmSync(outfile, { force: true });
  }
}
