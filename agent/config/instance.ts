import fs from 'node:fs';
import { writeFileAtomic } from '../host/atomic.js';
import type { Imds } from '../host/imds.js';
import { parseYamlLayer, tagsLayer, type Layer } from './load.js';
import { extractAgentPart } from './userdata.js';

/**
 * The instance's own config sources (user-data part, instance tags), read from IMDS, and the
 * cached copy that commands on hot paths read instead of asking IMDS.
 */

export interface InstanceSources {
  userData?: string | undefined;
  tags?: Record<string, string> | undefined;
  fetchedAt: string;
}

export async function fetchInstanceSources(imds: Imds): Promise<InstanceSources> {
  const [raw, tags] = await Promise.all([imds.userData(), imds.tags()]);
  return { userData: await extractAgentPart(raw), tags, fetchedAt: new Date().toISOString() };
}

export function instanceLayers(s: InstanceSources): Layer[] {
  const layers: Layer[] = [];
  if (s.userData !== undefined) layers.push(parseYamlLayer('user-data', 'user-data (zdt-agent part)', s.userData));
  const t = s.tags ? tagsLayer(s.tags) : undefined;
  if (t) layers.push(t);
  return layers;
}

/** Root-only: user-data may carry more than the agent's part. */
export function saveInstanceSources(file: string, s: InstanceSources): void {
  writeFileAtomic(file, `${JSON.stringify(s)}\n`, 0o600);
}

export function readCachedInstanceSources(file: string): InstanceSources | undefined {
  try {
    const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as InstanceSources;
    return typeof parsed === 'object' && parsed ? parsed : undefined;
  } catch {
    return undefined;
  }
}
