import { agentVersion } from '../version.js';

export function runVersion(): number {
  process.stdout.write(`zdt-agent ${agentVersion} (node ${process.versions.node}, ${process.platform}/${process.arch})\n`);
  return 0;
}
