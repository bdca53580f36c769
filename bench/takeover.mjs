#!/usr/bin/env node
/**
 * The interruption a NAT takeover causes (agent/boot/takeover.ts, docs/takeover.md), on the
 * testbed: moto behind the fidelity proxy, a chain of NAT instances, each replacement taking
 * the Elastic IP and the default route over from the one before (the usual NAT setup: no
 * static ENI, routes to the primary ENI, source/dest check off).
 *
 * Interruption = from the first change away from the previous instance to the verified state
 * pointing at the new one, as the phase measures it (`interruptionMs`); beside it, the same
 * window as an outside observer sees it: DescribeAddresses + DescribeRouteTables polled as
 * fast as moto answers, from the last sample with everything on the old instance to the first
 * with everything on the new one (its resolution is one poll, printed). Also the whole phase
 * (describe, source/dest, moves, verification). Prints the median and every run; never asserts.
 *
 *   node bench/takeover.mjs [--runs=5]
 *
 * Needs: moto_server (testbed). The TypeScript is bundled with esbuild on the fly.
 */
import { parseArgs } from 'node:util';
import { importTs } from './lib/bundle.mjs';
import { report } from './lib/report.mjs';

const { values } = parseArgs({ options: { runs: { type: 'string', default: '5' } } });
const RUNS = Math.max(1, Number(values.runs));

const { startAwsWorld, awsSection, identityOf, createSubnet, launchNat, predecessorHoldingEverything, whereNatPoints, contextFor, makeTempRoot, takeOver, newTakeoverRecord } = await importTs('takeover-lib', [
  "export { startAwsWorld, awsSection, identityOf } from './test/support/boot-env.ts';",
  "export { createSubnet, launchNat, predecessorHoldingEverything, whereNatPoints } from './test/support/takeover-env.ts';",
  "export { contextFor } from './test/support/terminate-env.ts';",
  "export { makeTempRoot } from './test/testbed/root.ts';",
  "export { takeOver, newTakeoverRecord } from './agent/boot/takeover.ts';",
]);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (x) => `${Math.round(x)} ms`;

const w = await startAwsWorld();
const root = await makeTempRoot();
try {
  const subnet = await createSubnet(w);
  const r = await predecessorHoldingEverything(w, subnet);
  let old = r.old.id;
  const phase = [];
  const seen = [];
  const total = [];
  const polls = [];
  for (let i = 0; i < RUNS; i++) {
    const fresh = await launchNat(w, subnet);
    const ctx = await contextFor(root.dir, {
      node: { role: 'nat' },
      takeover: { elasticIp: { tags: { 'zdt:nat': r.tag } }, routeTables: { tags: { 'zdt:nat': r.tag } } },
      aws: awsSection(w.proxy.endpoint),
    });
    // The outside observer: polls until everything points at the new instance.
    let stop = false;
    let lastAllOld;
    let firstAllNew;
    const pollTimes = [];
    const observer = (async () => {
      while (!stop && firstAllNew === undefined) {
        const t = performance.now();
        const now = await whereNatPoints(w, r);
        pollTimes.push(performance.now() - t);
        if (now.eip === old && now.defaultRoute === old) lastAllOld = t;
        if (now.eip === fresh.id && now.defaultRoute === fresh.id) firstAllNew = t;
      }
    })();
    const t0 = performance.now();
    const record = newTakeoverRecord();
    await takeOver(ctx, identityOf({ instanceId: fresh.id }), ctx.log, AbortSignal.timeout(120_000), record);
    total.push(performance.now() - t0);
    await Promise.race([observer, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    stop = true;
    await observer;
    phase.push(record.interruptionMs);
    if (lastAllOld !== undefined && firstAllNew !== undefined) seen.push(firstAllNew - lastAllOld);
    polls.push(median(pollTimes));
    old = fresh.id;
  }
  console.log(`NAT takeover (Elastic IP + 0.0.0.0/0 route, source/dest check off) on moto behind the fidelity proxy, ${RUNS} replacements in a chain (median)`);
  console.log('');
  console.log('| figure | median | runs |');
  console.log('|---|---|---|');
  console.log(`| interruption, as the phase measures it (first move -> verified) | ${ms(median(phase))} | ${phase.map(ms).join(', ')} |`);
  console.log(`| interruption, as an observer polling EC2 sees it (last all-old -> first all-new sample) | ${seen.length ? ms(median(seen)) : 'n/a'} | ${seen.map(ms).join(', ')} |`);
  console.log(`| whole takeover phase | ${ms(median(total))} | ${total.map(ms).join(', ')} |`);
  console.log('');
  console.log(`observer poll (3 describes in parallel): median ${ms(median(polls))}, the resolution of the observed figure`);
  const how = `median of ${RUNS} replacements in a chain, moto behind the fidelity proxy`;
  report('takeover', [
    { section: 'Takeover', name: 'NAT takeover: interruption as the phase measures it (first move -> verified)', value: ms(median(phase)), note: `${how}; runs ${phase.map(ms).join(', ')}` },
    {
      section: 'Takeover',
      name: 'NAT takeover: interruption as an observer polling EC2 sees it',
      value: seen.length ? ms(median(seen)) : 'n/a',
      note: `last all-old -> first all-new sample; resolution one poll, median ${ms(median(polls))}; runs ${seen.map(ms).join(', ')}`,
    },
    { section: 'Takeover', name: 'NAT takeover: whole phase', value: ms(median(total)), note: `describe, source/dest check, moves, verification; ${how}` },
  ]);
} finally {
  await root.cleanup();
  await w.stop();
}
