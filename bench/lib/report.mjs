import fs from 'node:fs';

/**
 * How a benchmark hands its figures to `make bench`'s report (bench/run.mjs): besides the
 * human-readable output it prints, it calls `report()` with its rows. When run by run.mjs,
 * ZDT_BENCH_RESULTS names a file of JSON lines that run.mjs turns into one table (printed,
 * and written to bench/results.md); run alone, `report()` does nothing.
 *
 * A row:
 *   section  the report's section, e.g. 'Emergency backup' (rows keep their order within it)
 *   name     what was measured, e.g. 'zdt-agent etcd backup, 256 MiB, MinIO'
 *   value    the figure as shown, e.g. '2.31 s' or '1.62x' (a string: the bench formats it)
 *   target   optional: the target as shown, e.g. '>= 1.6x'
 *   met      optional: true/false when there is a target
 *   note     optional: how it was measured (runs, median, conditions)
 */
export function report(bench, rows) {
  const file = process.env.ZDT_BENCH_RESULTS;
  if (!file) return;
  const lines = rows.map((r) => JSON.stringify({ bench, ...r })).join('\n');
  if (lines) fs.appendFileSync(file, `${lines}\n`);
}
