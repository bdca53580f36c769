import fs from 'node:fs';
import path from 'node:path';

/**
 * Every file the agent reads or writes on the node goes through here, so that tests (and
 * `--root`) run the agent against a temporary root directory.
 */
export interface Paths {
  readonly root: string;
  /** Map an absolute node path (`/etc/kubernetes`) under the root prefix. */
  at(nodePath: string): string;
  readonly configFile: string;
  readonly stateFile: string;
  readonly logFile: string;
  readonly stateDir: string;
}

export function makePaths(root = process.env.ZDT_ROOT ?? '/'): Paths {
  const resolved = path.resolve(root);
  const at = (nodePath: string): string => {
    if (!path.isAbsolute(nodePath)) throw new Error(`node path must be absolute: ${nodePath}`);
    return resolved === '/' ? nodePath : path.join(resolved, nodePath);
  };
  return {
    root: resolved,
    at,
    configFile: at('/etc/zdt-agent/config.yaml'),
    stateFile: at('/var/lib/zdt-agent/state.json'),
    stateDir: at('/var/lib/zdt-agent'),
    logFile: at('/var/log/zdt-agent.log'),
  };
}

/** The instance's config sources (user-data part, tags) as the last command that read IMDS saw them (0600). */
export function instanceCacheFile(paths: Paths): string {
  return paths.at('/var/lib/zdt-agent/instance-config.json');
}

/** The kernel's id of this boot (a new one at every boot); undefined where there is none. */
export function readBootId(paths: Paths): string | undefined {
  try {
    return fs.readFileSync(paths.at('/proc/sys/kernel/random/boot_id'), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}
