import { gunzipSync } from 'node:zlib';
import { ConfigError } from '../errors.js';

/**
 * Finds the zdt-agent part of EC2 user-data. Accepted forms:
 * - the whole user-data is a YAML document whose first line is `#zdt-agent`;
 * - a MIME multipart document (as cloud-init's write-mime-multipart makes) with one part
 *   whose Content-Type is `text/x-zdt-agent` (or `application/x-zdt-agent`, `+yaml` allowed),
 *   or whose file name is `zdt-agent.yaml`, or whose body starts with `#zdt-agent`;
 * - either of those gzip-compressed (cloud-init accepts gzip, and 16 KiB fills up fast).
 * Anything else (a shell script, a plain #cloud-config) has no zdt-agent part: `undefined`.
 */

/**
 * The most gzip-compressed user-data may decompress to. EC2 allows 16 KiB of user data, which
 * real configs (cloud-init parts, scripts) expand to well under this; a gzip bomb (16 KiB
 * that decompress to 16 MiB, or gigabytes in layers) stops here with a user-data error.
 */
export const USER_DATA_MAX_DECOMPRESSED_BYTES = 1024 * 1024;

const MARKER = '#zdt-agent';
const PART_TYPES = /^(text|application)\/x-zdt-agent(\+ya?ml)?$/i;
const PART_NAMES = /^zdt-agent(\.ya?ml)?$/i;

export async function extractAgentPart(raw: Uint8Array | undefined): Promise<string | undefined> {
  if (!raw || raw.length === 0) return undefined;
  let bytes = raw;
  if (bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = gunzipSync(bytes, { maxOutputLength: USER_DATA_MAX_DECOMPRESSED_BYTES });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ERR_BUFFER_TOO_LARGE') {
        throw new ConfigError('UserDataInvalid', `user-data decompresses to more than ${USER_DATA_MAX_DECOMPRESSED_BYTES / 1024} KiB`, {
          hint: 'check the launch template user-data: EC2 allows 16 KiB, and its zdt-agent part is a few lines of YAML',
        });
      }
      throw new ConfigError('UserDataInvalid', `user-data looks gzip-compressed but cannot be decompressed: ${(err as Error).message}`, {
        hint: 'check the launch template user-data (gzip it whole, then base64 once)',
      });
    }
  }
  const text = new TextDecoder('utf-8', { fatal: false }).decode(bytes);
  const head = text.trimStart();
  if (head.startsWith(MARKER)) return text;
  if (!/^(content-type:\s*multipart\/|mime-version:)/i.test(head)) return undefined;

  const { default: PostalMime } = await import('postal-mime');
  let parsed: Awaited<ReturnType<typeof PostalMime.parse>>;
  try {
    parsed = await PostalMime.parse(text);
  } catch (err) {
    throw new ConfigError('UserDataInvalid', `user-data is MIME but cannot be parsed: ${(err as Error).message}`, {
      hint: 'check the MIME boundaries of the launch template user-data',
    });
  }
  const parts: string[] = [];
  for (const a of parsed.attachments) {
    const body = typeof a.content === 'string' ? a.content : new TextDecoder().decode(a.content);
    if (PART_TYPES.test(a.mimeType) || (a.filename && PART_NAMES.test(a.filename)) || body.trimStart().startsWith(MARKER)) {
      parts.push(body);
    }
  }
  if (parsed.text?.trimStart().startsWith(MARKER)) parts.push(parsed.text);
  if (parts.length > 1) {
    throw new ConfigError('UserDataAmbiguous', `user-data has ${parts.length} zdt-agent parts`, {
      hint: 'keep exactly one part of type text/x-zdt-agent in the launch template user-data',
    });
  }
  return parts[0];
}
