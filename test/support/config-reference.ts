import { z } from 'zod';
import { configSchema } from '../../agent/config/schema.js';
import { TAG_KEYS } from '../../agent/config/load.js';
import { TRUST } from '../../agent/config/trust.js';

/** Renders the key table of docs/config.md from the schema (the test keeps them equal). */

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  default?: unknown;
  description?: string;
  enum?: unknown[];
  pattern?: string;
  items?: JsonSchema;
  anyOf?: JsonSchema[];
  additionalProperties?: JsonSchema | boolean;
  format?: string;
}

function typeOf(s: JsonSchema): string {
  if (s.enum) return s.enum.map((e) => `\`${String(e)}\``).join(' \\| ');
  if (s.anyOf) return s.anyOf.map(typeOf).join(' \\| ');
  if (s.type === 'array') return `list of ${s.items ? typeOf(s.items) : 'any'}`;
  if (s.type === 'object' && s.additionalProperties && typeof s.additionalProperties === 'object') return 'map of string';
  if (s.format === 'uri') return 'URL';
  return Array.isArray(s.type) ? s.type.join(' \\| ') : (s.type ?? 'any');
}

function fmtDefault(v: unknown): string {
  if (v === undefined) return '';
  if (typeof v === 'object' && v && Object.keys(v).length === 0) return '';
  return `\`${JSON.stringify(v)}\``;
}

/** Who may set a key (agent/config/trust.ts): the "set by" column. */
function setBy(key: string): string {
  const t = TRUST[key];
  if (!t) return '(unclassified)';
  if (t.level === 'open') return 'any source';
  if (t.level === 'fixed') return 'local files only';
  return `local files (${t.reason})`;
}

export function renderConfigReference(): string {
  const root = z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }) as JsonSchema;
  const rows: string[] = ['| key | type | default | set by | meaning |', '|---|---|---|---|---|'];
  const walk = (s: JsonSchema, prefix: string, required: boolean) => {
    const isSection = s.type === 'object' && s.properties;
    if (isSection && s.properties) {
      rows.push(`| **\`${prefix}\`** | section${required ? ' (required)' : ''} | | | ${s.description ?? ''} |`);
      for (const [k, v] of Object.entries(s.properties)) walk(v, `${prefix}.${k}`, (s.required ?? []).includes(k) && v.default === undefined);
      return;
    }
    const meaning = [s.description, s.pattern && !s.enum ? `pattern \`${s.pattern.replace(/\|/g, '\\|')}\`` : undefined].filter(Boolean).join('; ');
    rows.push(`| \`${prefix}\` | ${typeOf(s)}${required ? ' (required)' : ''} | ${fmtDefault(s.default)} | ${setBy(prefix)} | ${meaning} |`);
  };
  for (const [k, v] of Object.entries(root.properties ?? {})) walk(v, k, (root.required ?? []).includes(k));
  const tags = ['| tag | sets | by default |', '|---|---|---|', ...Object.entries(TAG_KEYS).map(([t, p]) => `| \`${t}\` | \`${p.join('.')}\` | ${TRUST[p.join('.')]?.level === 'open' ? 'yes' : 'only when trust.tags lists it'} |`)];
  return `<!-- generated from agent/config/schema.ts by test/unit/config-docs.test.ts (UPDATE_DOCS=1 make test-unit) -->\n\n### Keys\n\n${rows.join('\n')}\n\n### Instance tags\n\n${tags.join('\n')}\n`;
}
