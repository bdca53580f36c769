import fs from 'node:fs';
import path from 'node:path';
import { AgentError } from '../errors.js';

/**
 * One boot at a time: cloud-init and an operator running `zdt-agent boot` by hand must not
 * both attach, format or kubeadm. A lock file holds the PID; a lock whose process is gone
 * (kill -9, power loss) is taken over.
 */
export function acquireBootLock(file: string): () => void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o600);
      fs.writeSync(fd, `${process.pid}\n`);
      fs.closeSync(fd);
      return () => {
        try {
          if (fs.readFileSync(file, 'utf8').trim() === String(process.pid)) fs.rmSync(file);
        } catch {
          // Already gone.
        }
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = Number.parseInt(readOr(file, ''), 10);
    if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && alive(holder)) {
      throw new AgentError('BootRunning', `another zdt-agent boot (PID ${holder}) is running`, {
        hint: `wait for it to finish ('zdt-agent status'); remove ${file} only if PID ${holder} is not zdt-agent`,
      });
    }
    fs.rmSync(file, { force: true });
  }
  throw new AgentError('BootLock', `cannot take the boot lock ${file}`, { hint: 'check the directory permissions' });
}

function readOr(file: string, dflt: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return dflt;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
