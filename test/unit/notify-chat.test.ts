import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { CHAT_LIMITS, chatFactsOf, descriptionOf, renderChat, threadIdOf, type ChatNotification } from '../../agent/notify/chat.js';
import { outgoingOf } from '../../agent/notify/events.js';
import { EVENT_NAMES, exampleAsgArn, exampleEvent, exampleIdentity, renderChatExamples } from '../support/event-examples.js';

/** The chat rendering of events (agent/notify/chat.ts) against the service's published schema. */

const schemaJson = JSON.parse(fs.readFileSync(new URL('../../docs/schemas/chat-notification.schema.json', import.meta.url), 'utf8')) as Parameters<typeof z.fromJSONSchema>[0];
const chatSchema = z.fromJSONSchema(schemaJson);
const facts = chatFactsOf(exampleIdentity, exampleAsgArn);
const render = (ev = exampleEvent('boot.failed')) => renderChat(ev, facts);

function expectValid(msg: unknown): void {
  const r = chatSchema.safeParse(msg);
  expect(r.success, r.success ? '' : JSON.stringify(r.error.issues)).toBe(true);
}

describe('chat notifications', () => {
  it.each(EVENT_NAMES)('%s renders as a valid custom notification', (name) => {
    const msg = render(exampleEvent(name));
    expectValid(msg);
    expect(msg.content.title).toContain('prod controller 01 i-0a1b2c3d4e5f67890');
    expect(msg.metadata.eventType).toBe(name);
  });

  it('the published schema refuses what the service refuses (the schema file itself is checked)', () => {
    const good = render();
    expect(chatSchema.safeParse({ ...good, version: '2.0' }).success).toBe(false);
    expect(chatSchema.safeParse({ ...good, content: { ...good.content, textType: 'markdown' } }).success).toBe(false);
    expect(chatSchema.safeParse({ ...good, content: { ...good.content, title: 't'.repeat(251) } }).success).toBe(false);
    expect(chatSchema.safeParse({ ...good, content: { ...good.content, description: 'd'.repeat(8001) } }).success).toBe(false);
  });

  it("threads an instance's boot and shutdown together, and another instance apart", () => {
    const ids = EVENT_NAMES.map((n) => render(exampleEvent(n)).metadata.threadId);
    expect(new Set(ids).size).toBe(1);
    const other = exampleEvent('boot.succeeded');
    other.instance.id = 'i-0ffee1234567890ab';
    expect(threadIdOf(other)).not.toBe(ids[0]);
  });

  it('a failure names the phase, its error and hint, the next steps, and the redacted log tail', () => {
    const msg = render();
    expect(msg.content.title).toBe('🔴 Boot failed in etcd-volume: prod controller 01 i-0a1b2c3d4e5f67890');
    expect(msg.content.description).toContain('*Failed* `etcd-volume`');
    expect(msg.content.description).toContain('terminate the old one, or check the controller Auto Scaling groups');
    expect(msg.content.description).toMatch(/etcd-volume\s+failed\s+0\.4s/);
    expect(msg.content.description).toContain('*Log tail* (redacted)');
    expect(msg.content.description).toContain('--token [REDACTED]');
    expect(JSON.stringify(msg)).not.toContain('0123456789abcdef');
    expect(msg.content.nextSteps?.[0]).toMatch(/another controller of this slot/);
    expect(msg.content.description).toContain('https://eu-central-1.console.aws.amazon.com/ec2/home?region=eu-central-1#InstanceDetails:instanceId=i-0a1b2c3d4e5f67890');
  });

  it('relates the instance, its Auto Scaling group and its stack by ARN', () => {
    expect(render().metadata.relatedResources).toEqual([
      'arn:aws:ec2:eu-central-1:123456789012:instance/i-0a1b2c3d4e5f67890',
      exampleAsgArn,
      exampleIdentity.tags['aws:cloudformation:stack-id'],
    ]);
  });

  it('a success has no next steps and no log tail', () => {
    const msg = render(exampleEvent('boot.succeeded'));
    expect(msg.content.nextSteps).toBeUndefined();
    expect(msg.content.description).not.toContain('Log tail');
  });

  it('a log tail too long for the description loses its oldest whole lines, with a marker', () => {
    const ev = exampleEvent('boot.failed');
    const lines = Array.from({ length: 400 }, (_, i) => `2026-03-01T12:01:02.${String(i).padStart(3, '0')}Z INFO  line ${i} ${'x'.repeat(40 + (i % 17))}`);
    ev.failure!.logTail = lines;
    const msg = render(ev);
    expectValid(msg);
    const d = msg.content.description;
    expect(d.length).toBeLessThanOrEqual(CHAT_LIMITS.description);
    expect(d).toMatch(/… \d+ earlier lines cut to the chat size limit …/);
    expect(d.endsWith(`${lines.at(-1)}\n\`\`\``)).toBe(true);
    // Every tail line in the message is a whole line of the log.
    const shown = d.slice(d.indexOf('*Log tail*')).split('\n').slice(3, -1);
    for (const l of shown) expect(lines).toContain(l);
  });

  it('a description whose facts alone exceed the limit is cut at a line boundary with a marker', () => {
    const ev = exampleEvent('boot.failed');
    ev.failure!.error = 'E'.repeat(9000);
    const d = descriptionOf(ev);
    expect(d.length).toBeLessThanOrEqual(CHAT_LIMITS.description);
    expect(d).toContain('… (cut to the chat size limit)');
    expect(d).not.toContain('EEEE');
  });

  it('notify.format decides which messages go out, each tagged with its format', () => {
    const ev = exampleEvent('terminate.started');
    const chat = (): ChatNotification => render(ev);
    expect(outgoingOf(ev, 'zdt', chat).map((m) => m.format)).toEqual(['zdt']);
    expect(outgoingOf(ev, 'chat', chat).map((m) => m.format)).toEqual(['chat']);
    const both = outgoingOf(ev, 'both', chat);
    expect(both.map((m) => m.format)).toEqual(['zdt', 'chat']);
    expect(JSON.parse(both[0]!.message).schema).toBe('zdt-agent/event/v1');
    expectValid(JSON.parse(both[1]!.message));
  });
});

describe('docs/events.md chat renderings', () => {
  const DOC = new URL('../../docs/events.md', import.meta.url);
  const BEGIN = '<!-- BEGIN GENERATED CHAT EXAMPLES -->';
  const END = '<!-- END GENERATED CHAT EXAMPLES -->';
  it('show each event type as renderChat renders it', () => {
    const doc = fs.readFileSync(DOC, 'utf8');
    const start = doc.indexOf(BEGIN);
    const end = doc.indexOf(END);
    expect(start, 'docs/events.md needs the chat example markers').toBeGreaterThan(-1);
    const expected = renderChatExamples((ev) => renderChat(ev, facts));
    if (process.env.UPDATE_DOCS) {
      fs.writeFileSync(DOC, `${doc.slice(0, start + BEGIN.length)}\n${expected}${doc.slice(end)}`);
      return;
    }
    expect(doc.slice(start + BEGIN.length + 1, end)).toBe(expected);
  });
});
