import fs from 'node:fs';

/**
 * Reading a file someone else named (--config) without trusting what it is: only a regular
 * file, at most `maxBytes`. The open is non-blocking, so a FIFO nobody writes to does not
 * hang the command, and the type is checked with fstat on the open descriptor (a path checked
 * first and opened later could be swapped in between). /dev/zero, a directory or a socket is
 * refused before a byte is read.
 */

/**
 * The cap of a config file (/etc/zdt-agent/config.yaml, --config): they are a few KiB, and
 * the cap keeps a wrong path (a log, an image) from filling memory.
 */
export const CONFIG_FILE_MAX_BYTES = 256 * 1024;

export type FileProblem =
  | { kind: 'errno'; code: string }
  | { kind: 'not-regular'; what: string }
  | { kind: 'too-large'; max: number };

export class BoundedFileError extends Error {
  readonly problem: FileProblem;
  constructor(file: string, problem: FileProblem) {
    super(`${file}: ${describeFileProblem(problem)}`);
    this.problem = problem;
  }
}

export function describeFileProblem(p: FileProblem): string {
  if (p.kind === 'errno') return p.code;
  if (p.kind === 'not-regular') return `is ${p.what}, not a regular file`;
  return `is larger than ${p.max >= 1024 ? `${p.max / 1024} KiB` : `${p.max} bytes`}, the limit`;
}

function typeOf(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/** The bytes of regular file `file`, at most `maxBytes`; BoundedFileError otherwise. */
export function readBoundedFile(file: string, maxBytes: number): Buffer {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOCTTY);
  } catch (err) {
    throw new BoundedFileError(file, { kind: 'errno', code: (err as NodeJS.ErrnoException).code ?? (err as Error).message });
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new BoundedFileError(file, { kind: 'not-regular', what: typeOf(st) });
    if (st.size > maxBytes) throw new BoundedFileError(file, { kind: 'too-large', max: maxBytes });
    // Read one byte past the cap: a file that grows after fstat is still refused.
    const buf = Buffer.alloc(maxBytes + 1);
    let total = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, total, buf.length - total, null);
      if (n === 0) break;
      total += n;
      if (total > maxBytes) throw new BoundedFileError(file, { kind: 'too-large', max: maxBytes });
    }
    return buf.subarray(0, total);
  } catch (err) {
    if (err instanceof BoundedFileError) throw err;
    throw new BoundedFileError(file, { kind: 'errno', code: (err as NodeJS.ErrnoException).code ?? (err as Error).message });
  } finally {
    fs.closeSync(fd);
  }
}
