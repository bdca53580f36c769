import { parseDocument, YAMLError, YAMLWarning } from 'yaml';
import type { z } from 'zod';
import { ConfigError } from '../errors.js';
import { BoundedFileError, CONFIG_FILE_MAX_BYTES, describeFileProblem, readBoundedFile } from '../host/bounded-file.js';
import { redact } from '../log/redact.js';
import { combinationProblems, configSchema, type CombinationFacts, type Config } from './schema.js';
import { hintFor } from './hints.js';
import { trustProblems } from './trust.js';

/**
 * Config sources, merged in this order (a later source wins, key by key; lists are replaced
 * whole):
 *
 *   1. built-in defaults (the schema)
 *   2. /etc/zdt-agent/config.yaml   — baked into the AMI: site-wide defaults
 *   3. the zdt-agent part of the EC2 user-data — the launch template: this cluster
 *   4. instance tags `zdt:*` (a documented subset) — per instance or ASG
 *   5. --config FILE               — an operator's explicit last word
 *
 * Sources 3 and 4 come from IMDS (see instance.ts); they are cached by the commands that
 * read IMDS so that the ssh-keys hot path never has to.
 */

export type SourceName = 'file' | 'user-data' | 'tags' | '--config';

export interface Layer {
  source: SourceName;
  /** Where it came from, for messages: a path, "IMDS user-data", … */
  origin: string;
  data: Record<string, unknown>;
}

/** Instance tag -> config path. Only these tags configure the agent. */
export const TAG_KEYS: Readonly<Record<string, readonly string[]>> = {
  'zdt:cluster': ['cluster', 'name'],
  'zdt:role': ['node', 'role'],
  'zdt:controller-index': ['node', 'controllerIndex'],
  'zdt:kubernetes-version': ['cluster', 'kubernetesVersion'],
  'zdt:api-endpoint': ['cluster', 'apiEndpoint'],
  'zdt:ssh-iam-group': ['ssh', 'iamGroup'],
};

export function parseYamlLayer(source: SourceName, origin: string, text: string): Layer {
  // logLevel 'silent': the yaml library would otherwise print its warnings (an unknown tag
  // such as `!vault`) as a Node warning on stderr, quoting the source line and its value.
  // Errors and warnings alike become the config error instead, by their first line only.
  let data: unknown;
  try {
    const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true, logLevel: 'silent' });
    const problem = doc.errors[0] ?? doc.warnings[0];
    if (problem) throw problem;
    data = doc.toJS();
  } catch (err) {
    throw yamlProblem(origin, err as Error);
  }
  if (data === null || data === undefined) data = {};
  if (typeof data !== 'object' || Array.isArray(data)) {
    throw new ConfigError('ConfigSyntax', `${origin}: the top level must be a mapping of sections (cluster:, node:, …)`, {
      hint: 'see docs/config.md for the layout',
    });
  }
  const proto = protoKeyPath(data);
  if (proto !== undefined) {
    // The YAML parser makes it an own key; merged like any other it would change the
    // prototype of every object in the process.
    throw new ConfigError('ConfigSyntax', `${origin}: the key ${proto} is not allowed`, { hint: 'remove it; the keys are listed in docs/config.md' });
  }
  return { source, origin, data: data as Record<string, unknown> };
}

function yamlProblem(origin: string, err: Error): ConfigError {
  const where = err instanceof YAMLError && err.linePos ? ` line ${err.linePos[0].line}` : '';
  const first = err.message.split('\n')[0] ?? '';
  const hint = err instanceof YAMLWarning ? 'the agent resolves no YAML tags: write the value itself' : 'fix the YAML syntax (indentation, quotes, tabs)';
  return new ConfigError('ConfigSyntax', redact(`${origin}${where}: ${first}`), { hint });
}

/** The path of the first `__proto__` key in parsed YAML, or undefined. */
function protoKeyPath(v: unknown, prefix = ''): string | undefined {
  if (!v || typeof v !== 'object') return undefined;
  for (const [k, child] of Object.entries(v)) {
    const p = prefix ? `${prefix}.${k}` : k;
    if (k === '__proto__') return p;
    const deeper = protoKeyPath(child, p);
    if (deeper !== undefined) return deeper;
  }
  return undefined;
}

export function readFileLayer(source: SourceName, file: string, required: boolean): Layer | undefined {
  let text: string;
  try {
    text = readBoundedFile(file, CONFIG_FILE_MAX_BYTES).toString('utf8');
  } catch (err) {
    const p = err instanceof BoundedFileError ? err.problem : { kind: 'errno' as const, code: (err as Error).message };
    if (p.kind === 'errno' && p.code === 'ENOENT' && !required) return undefined;
    const what = p.kind === 'errno' ? `cannot read ${file}: ${p.code}` : `${file} ${describeFileProblem(p)}`;
    const hint =
      p.kind === 'too-large'
        ? 'check the path: a config file is a few KiB of YAML'
        : p.kind === 'not-regular'
          ? 'name a regular YAML file'
          : required
            ? 'check the path given to --config'
            : 'check the file permissions';
    throw new ConfigError('ConfigUnreadable', what, { hint });
  }
  return parseYamlLayer(source, file, text);
}

export function tagsLayer(tags: Record<string, string>): Layer | undefined {
  const data: Record<string, unknown> = {};
  let any = false;
  for (const [key, value] of Object.entries(tags)) {
    // Own keys only: a tag named `constructor` is a tag like any other.
    const path = Object.hasOwn(TAG_KEYS, key) ? TAG_KEYS[key] : undefined;
    if (!path) continue;
    setPath(data, path, value);
    any = true;
  }
  return any ? { source: 'tags', origin: 'instance tags', data } : undefined;
}

function setPath(obj: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let cur = obj;
  for (const key of path.slice(0, -1)) {
    const next = cur[key];
    if (!next || typeof next !== 'object' || Array.isArray(next)) cur[key] = {};
    cur = cur[key] as Record<string, unknown>;
  }
  cur[path[path.length - 1] as string] = value;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);

/** Deep merge; records which source set each leaf (for error messages). */
export function mergeLayers(layers: readonly Layer[]): { merged: Record<string, unknown>; provenance: Map<string, string> } {
  const provenance = new Map<string, string>();
  const merge = (into: Record<string, unknown>, from: Record<string, unknown>, prefix: string, origin: string) => {
    for (const [k, v] of Object.entries(from)) {
      const p = prefix ? `${prefix}.${k}` : k;
      if (isPlainObject(v) && isPlainObject(into[k])) {
        merge(into[k] as Record<string, unknown>, v, p, origin);
      } else {
        into[k] = isPlainObject(v) ? structuredClone(v) : v;
        provenance.set(p, origin);
      }
    }
  };
  const merged: Record<string, unknown> = {};
  for (const l of layers) merge(merged, l.data, '', l.origin);
  return { merged, provenance };
}

export interface ConfigProblem {
  path: string;
  message: string;
  hint: string;
  origin?: string | undefined;
}

function originOf(path: string, provenance: Map<string, string>): string | undefined {
  for (let p = path; p; p = p.includes('.') ? p.slice(0, p.lastIndexOf('.')) : '') {
    const o = provenance.get(p);
    if (o) return o;
  }
  return undefined;
}

export function describeIssues(issues: readonly z.core.$ZodIssue[], provenance: Map<string, string>): ConfigProblem[] {
  const out: ConfigProblem[] = [];
  for (const issue of issues) {
    const base = issue.path.map(String).join('.');
    if (issue.code === 'unrecognized_keys') {
      for (const key of issue.keys) {
        const path = base ? `${base}.${key}` : key;
        out.push({ path, message: `unknown key '${key}'`, hint: hintFor(path, 'unknown'), origin: originOf(path, provenance) });
      }
      continue;
    }
    const path = base || '(top level)';
    out.push({ path, message: issue.message, hint: hintFor(base, issue.code), origin: originOf(base, provenance) });
  }
  return out;
}

export class ConfigInvalid extends ConfigError {
  readonly problems: ConfigProblem[];
  /** `untrusted`: the first problem is a key from a source that may not set it (trust.ts). */
  constructor(problems: ConfigProblem[], untrusted?: ConfigProblem) {
    const first = problems[0];
    const more = problems.length > 1 ? ` (${problems.length - 1} more: run 'zdt-agent config validate')` : '';
    if (untrusted) {
      super('ConfigUntrusted', `${untrusted.path}: ${untrusted.message}${more}`, { hint: untrusted.hint });
    } else {
      super(
        'ConfigInvalid',
        `${problems.length} problem${problems.length === 1 ? '' : 's'} in the configuration; first: ${first?.path}: ${first?.message}`,
        { hint: "run 'zdt-agent config validate' for the full list" },
      );
    }
    this.problems = problems;
  }
}

export function formatProblems(problems: readonly ConfigProblem[]): string {
  return problems
    .map((p) => `${p.path}: ${p.message}${p.origin ? ` (from ${p.origin})` : ''}\n    hint: ${p.hint}`)
    .join('\n');
}

/** The AMI's config file on a node; messages name the one a command read (--root). */
export const LOCAL_CONFIG_FILE = '/etc/zdt-agent/config.yaml';

const TAG_OF: Readonly<Record<string, string>> = Object.fromEntries(Object.entries(TAG_KEYS).map(([tag, path]) => [path.join('.'), tag]));

/**
 * Merge and validate. Throws ConfigInvalid with every problem; nothing half-applies. A key
 * from a source that may not set it (trust.ts) comes first, as ConfigUntrusted.
 */
export function resolveConfig(layers: readonly Layer[], o: { localFile?: string } = {}): Config {
  const untrusted = trustProblems(layers, { localFile: o.localFile ?? LOCAL_CONFIG_FILE, tagOf: TAG_OF });
  const { merged, provenance } = mergeLayers(layers);
  const r = configSchema.safeParse(merged);
  if (r.success && untrusted.length === 0) return r.data;
  const problems = [...untrusted, ...(r.success ? [] : describeIssues(r.error.issues, provenance))];
  // A type error stops zod before the combination rules; run them on the raw input too.
  for (const c of combinationProblems(merged as CombinationFacts)) {
    const path = c.path.join('.');
    if (!problems.some((p) => p.path === path)) {
      problems.push({ path, message: c.message, hint: hintFor(path, 'custom'), origin: originOf(path, provenance) });
    }
  }
  throw new ConfigInvalid(problems, untrusted[0]);
}
