import { planBoot } from '../boot/plan.js';
import { buildContext, type GlobalOptions } from '../context.js';
import { readIdentity } from '../host/identity.js';
import type { PhaseDecision, ShutdownEvent } from '../node.js';
import { planTakeover, takesOver } from '../boot/takeover.js';
import { checkSshdInstall, formatInstallChecks } from '../ssh/install-check.js';
import { planTerminate } from '../terminate/plan.js';
import { planWatch } from '../watch/notices.js';

function table(title: string, rows: PhaseDecision[]): string {
  const lines = [title];
  for (const r of rows) lines.push(`  ${r.applies ? 'run ' : 'skip'}  ${r.name.padEnd(20)} ${r.why}`);
  return lines.join('\n');
}

/**
 * Dry run: reads config and IMDS (and EC2 tags if IMDS has none); changes nothing. On a
 * bastion it also checks the sshd installation (agent/ssh/install-check.ts); a service host
 * with a takeover section describes who holds its Elastic IP, ENI and routes now.
 */
export async function runPlan(args: GlobalOptions & { event?: ShutdownEvent }): Promise<number> {
  const ctx = await buildContext(args, { instance: 'imds', logToFile: false });
  const identity = await readIdentity(ctx.imds, { log: ctx.log, tags: ctx.instance?.tags, aws: ctx.aws });
  const facts = { config: ctx.config, identity };
  const event = args.event ?? 'terminate';
  const c = ctx.config;
  const head = [
    `node:      ${identity.instanceId} ${identity.instanceType} in ${identity.availabilityZone} (${identity.lifecycle})`,
    `role:      ${c.node.role}${c.node.controllerIndex !== undefined ? ` ${c.node.controllerIndex}` : ''}${c.cluster ? ` of cluster ${c.cluster.name}` : ''}`,
    `sources:   ${ctx.layers.map((l) => l.origin).join(', ') || 'defaults only'}`,
  ];
  const sections = [
    head.join('\n'),
    table('boot would:', planBoot(facts)),
    table(`terminate (event ${event}) would:`, planTerminate(facts, event)),
    table(`the watcher (every ${c.watch.interval}s), per notice, would:`, planWatch(c)),
  ];
  // A bastion is only useful if sshd really asks ssh-keys, and agrees to run it.
  if (c.node.role === 'bastion') sections.push(formatInstallChecks(checkSshdInstall(ctx.paths)));
  if (takesOver(c)) sections.push(await planTakeover(ctx, identity));
  process.stdout.write(`${sections.join('\n\n')}\n`);
  return 0;
}
