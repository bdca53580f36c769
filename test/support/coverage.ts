import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { SourceMap, type SourceMapPayload } from 'node:module';
import os from 'node:os';
import path from 'node:path';

interface V8Coverage {
  result: { url: string; functions: { functionName: string; ranges: { startOffset: number; endOffset: number; count: number }[] }[] }[];
}

/**
 * The agent's sources (paths relative to the tree the bundle was built from, e.g.
 * `agent/cli.ts`, `node_modules/yargs/…`) that executed in `node BUNDLE ARGS`: V8 coverage of
 * the real run, mapped back through the bundles' source maps. Proves what a command does not
 * load (the AWS SDK on `version`, yargs on the ssh-keys cache hit).
 */
export function executedSources(o: { node: string; bundle: string; args: string[]; env?: NodeJS.ProcessEnv }): { status: number | null; stderr: string; sources: Set<string> } {
  const covDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zdt-cov-'));
  try {
    const r = spawnSync(o.node, [o.bundle, ...o.args], { encoding: 'utf8', env: { ...(o.env ?? process.env), NODE_V8_COVERAGE: covDir }, timeout: 60_000 });
    const sources = new Set<string>();
    for (const file of fs.readdirSync(covDir)) {
      const { result } = JSON.parse(fs.readFileSync(path.join(covDir, file), 'utf8')) as V8Coverage;
      for (const script of result.filter((s) => /\/zdt-agent[^/]*\.cjs$/.test(s.url))) {
        const bundle = new URL(script.url).pathname;
        const code = fs.readFileSync(bundle, 'utf8');
        const lineStarts = [0];
        for (let i = code.indexOf('\n'); i !== -1; i = code.indexOf('\n', i + 1)) lineStarts.push(i + 1);
        const map = new SourceMap(JSON.parse(fs.readFileSync(`${bundle}.map`, 'utf8')) as SourceMapPayload);
        const treeRoot = path.dirname(path.dirname(bundle)); // dist/..
        for (const fn of script.functions) {
          const range = fn.ranges[0];
          if (!range || range.count === 0) continue;
          const line = upperBound(lineStarts, range.startOffset) - 1;
          const entry = map.findEntry(line, range.startOffset - lineStarts[line]!);
          if ('originalSource' in entry) sources.add(path.relative(treeRoot, path.resolve(path.dirname(bundle), entry.originalSource)));
        }
      }
    }
    return { status: r.status, stderr: r.stderr, sources };
  } finally {
    fs.rmSync(covDir, { recursive: true, force: true });
  }
}

/** Index of the first element greater than `value` in the sorted array. */
function upperBound(sorted: number[], value: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]! <= value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
