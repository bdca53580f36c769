import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { NODE_SELF_DELETE_RBAC } from '../../agent/node-rbac.js';

/** The grant docs/terminate.md gives for clusters not bootstrapped by zdt-agent is the one controller 00 applies. */

const doc = fs.readFileSync(new URL('../../docs/terminate.md', import.meta.url), 'utf8');
const yamlBlocks = [...doc.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);

describe('docs/terminate.md', () => {
  it('shows exactly the ClusterRole and ClusterRoleBinding that controller 00 applies', () => {
    expect(yamlBlocks).toHaveLength(1);
    expect(parseAllDocuments(yamlBlocks[0]!).map((d) => d.toJS())).toEqual(NODE_SELF_DELETE_RBAC);
  });
});
