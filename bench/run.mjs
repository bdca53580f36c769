#!/usr/bin/env node
/**
 * `make bench`: runs every bench/*.mjs (except this file) in turn with this node, and prints
 * their figures. Benchmarks print; they never assert. Exits non-zero when a benchmark fails.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

const dir = import.meta.dirname;
const benches = fs
  .readdirSync(dir)
  .filter((f) => f.endsWith('.mjs') && f !== path.basename(import.meta.filename))
  .sort();

const failed = [];
for (const file of benches) {
  console.log(`\n=== bench/${file}`);
  const r = spawnSync(process.execPath, [path.join(dir, file)], { stdio: 'inherit' });
  if (r.status !== 0) failed.push(`${file} (${r.status ?? r.signal})`);
}
if (failed.length > 0) {
  console.error(`\nbench: failed: ${failed.join(', ')}`);
  process.exit(1);
}
