import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { renderConfigReference } from '../support/config-reference.js';

const DOC = new URL('../../docs/config.md', import.meta.url);
const BEGIN = '<!-- BEGIN GENERATED -->';
const END = '<!-- END GENERATED -->';

describe('docs/config.md', () => {
  it('lists exactly the keys, defaults and tags of the schema', () => {
    const doc = fs.readFileSync(DOC, 'utf8');
    const start = doc.indexOf(BEGIN);
    const end = doc.indexOf(END);
    expect(start, 'docs/config.md needs the generated-section markers').toBeGreaterThan(-1);
    const expected = renderConfigReference();
    if (process.env.UPDATE_DOCS) {
      fs.writeFileSync(DOC, `${doc.slice(0, start + BEGIN.length)}\n${expected}${doc.slice(end)}`);
      return;
    }
    expect(doc.slice(start + BEGIN.length + 1, end)).toBe(expected);
  });
});
