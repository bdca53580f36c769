'use strict';
/**
 * The runtime half of the bundle split made by scripts/build-binary.mjs.
 *
 * agent/main.ts answers `version` itself and imports ./cli.js (yargs, every command, the AWS
 * SDK: 3 MB of JavaScript) only for other commands. A single-file SEA would still read,
 * deserialize and run the top level of all 3 MB on every start (about 20 ms), so the build
 * bundles agent/cli.ts as a chunk of its own and points main.ts's `import('./cli.js')` at
 * `loadChunk('cli')` below, which is bundled into the small main script.
 *
 *  - In the single executable the chunk is the SEA asset `cli.cjs`, compiled with the V8 code
 *    cache `cli.cache` (made by the build after a warm-up, so it also holds the functions the
 *    CLI path and a first boot compile lazily; absent for arm64, whose V8 rejects an x64 cache).
 *  - Run as `node dist/zdt-agent.cjs`, it is the file dist/zdt-agent-cli.cjs beside the bundle.
 *
 * ZDT_TRACE_CHUNKS=1 prints one line per chunk load: source, code cache verdict, time.
 *
 * The build also runs this file: `node lazy-chunk.cjs make-cache NAME FILE OUT CALLS [ARGS...]`
 * loads chunk NAME from FILE exactly as the binary does, calls its runCli(ARGS) when ARGS are
 * given and then each export named in CALLS (comma-separated, `-` for none; e.g. the CLI
 * chunk's side-effect-free warmUpBootForCodeCache) with output muted, and writes the code
 * cache to OUT. It must run on the node binary the SEA is made from.
 */
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');

const WRAPPER_HEAD = '(function (exports, require, module, __filename, __dirname) {';
const WRAPPER_TAIL = '\n})';

/** Compile a CommonJS chunk the same way at build time (cache made) and at run time (cache used). */
function compileChunk(source, filename, cachedData) {
  return new vm.Script(WRAPPER_HEAD + source + WRAPPER_TAIL, {
    filename,
    cachedData,
    importModuleDynamically: vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER,
  });
}

function evaluateChunk(script) {
  const module = { exports: {} };
  // In the SEA `require` loads built-in modules only; the chunk needs no others.
  script.runInThisContext()(module.exports, require, module, __filename, __dirname);
  return module.exports;
}

function loadChunk(name) {
  const started = process.env.ZDT_TRACE_CHUNKS === '1' ? performance.now() : undefined;
  const trace = (what) => {
    if (started === undefined) return;
    process.stderr.write(`zdt-agent: chunk ${name}: ${what}, ${(performance.now() - started).toFixed(1)} ms\n`);
  };

  const sea = require('node:sea');
  if (!sea.isSea()) {
    const exports = require(path.join(__dirname, `zdt-agent-${name}.cjs`));
    trace('file');
    return exports;
  }
  let cachedData;
  try {
    cachedData = new Uint8Array(sea.getRawAsset(`${name}.cache`));
  } catch {
    cachedData = undefined; // no cache for this architecture
  }
  const script = compileChunk(sea.getAsset(`${name}.cjs`, 'utf8'), `zdt-agent-${name}.cjs`, cachedData);
  const exports = evaluateChunk(script);
  trace(`sea, code cache ${cachedData === undefined ? 'absent' : script.cachedDataRejected ? 'rejected' : 'accepted'}`);
  return exports;
}

/** Build time: load the chunk as the binary would, warm it up, write its code cache. */
async function makeCache(name, chunkFile, out, calls, args) {
  const script = compileChunk(fs.readFileSync(chunkFile, 'utf8'), `zdt-agent-${name}.cjs`);
  const chunk = evaluateChunk(script);
  const write = { out: process.stdout.write, err: process.stderr.write };
  process.stdout.write = process.stderr.write = () => true;
  try {
    if (args.length > 0) await chunk.runCli(args);
    for (const fn of calls) {
      if (typeof chunk[fn] !== 'function') throw new Error(`chunk ${name} exports no function ${fn}`);
      await chunk[fn]();
    }
  } finally {
    process.stdout.write = write.out;
    process.stderr.write = write.err;
  }
  fs.writeFileSync(out, script.createCachedData());
}

module.exports = { loadChunk, compileChunk };

if (require.main === module && process.argv[2] === 'make-cache') {
  const [name, chunkFile, out, calls, ...args] = process.argv.slice(3);
  makeCache(name, chunkFile, out, calls === '-' ? [] : calls.split(','), args).catch((err) => {
    process.stderr.write(`lazy-chunk: ${err.stack ?? err}\n`);
    process.exit(1);
  });
}
