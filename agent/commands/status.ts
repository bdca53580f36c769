import { formatState, readState } from '../log/state.js';
import { makePaths } from '../host/paths.js';
import { agentVersion } from '../version.js';
import type { GlobalOptions } from '../context.js';

export async function runStatus(args: GlobalOptions & { json?: boolean }): Promise<number> {
  const paths = makePaths(args.root);
  const state = readState(paths.stateFile, agentVersion);
  process.stdout.write(`${formatState(state)}\n`);
  return 0;
}
