import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** One call of a stand-in (kubeadm, apk, modprobe, rc-service, kubelet), as it appended it. */
export interface StandinRecord {
  tool: string;
  argv: string[];
  stdin: string;
  cwd: string;
  /** ISO 8601, milliseconds. */
  ts: string;
}

/** The directory of the stand-ins: put it first on PATH. */
export function standinPath(): string {
  return path.join(path.dirname(fileURLToPath(import.meta.url)), 'standins');
}

/** An environment whose PATH finds the stand-ins first and whose record file is `recordFile`. */
export function standinEnv(recordFile: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { ...process.env, PATH: `${standinPath()}:${process.env.PATH ?? '/usr/bin:/bin'}`, ZDT_RECORD_FILE: recordFile, ...extra };
}

/** Every call recorded in `file`, oldest first; [] when nothing was recorded yet. */
export async function readRecords(file: string): Promise<StandinRecord[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return text
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as StandinRecord);
}
