import { METRIC_PREFIX, writeMetrics, type MetricFamily } from '../log/metrics.js';
import type { Logger } from '../log/logger.js';
import type { AuditRecord } from './audit.js';

/**
 * ssh-keys metrics (docs/metrics.md): answers by result and source, and how old the key cache
 * was at the last answer. Written by every answer, as the AuthorizedKeysCommandUser: the
 * textfile directory must let that user create files (docs/metrics.md), else the write fails
 * quietly (a debug line) and sshd's answer is unaffected.
 *
 * Counters are read from the previous file and written back. Two answers at the same moment
 * can lose one increment (both read N, both write N+1); a counter stays close and a rare
 * drop reads as a reset to rate(). A lock would cost every key offer a round of file I/O.
 */

const P = `${METRIC_PREFIX}ssh_keys`;

export interface AnswerFacts {
  record: AuditRecord;
  /** When the snapshot the answer came from was read from IAM (ms), when there was one. */
  cacheFetchedAt?: number | undefined;
  now?: number;
}

export function answerFamilies(a: AnswerFacts): MetricFamily[] {
  const now = a.now ?? Date.now();
  const source = a.record.source ?? 'none';
  return [
    {
      name: `${P}_answers_total`,
      type: 'counter',
      help: 'ssh-keys answers by result (keys, no-keys, not-in-group, invalid-user, system-user, error, deadline, …) and source (cache, stale-cache, iam, none).',
      samples: [{ labels: { result: a.record.outcome, source }, value: 1 }],
    },
    { name: `${P}_last_answer_timestamp_seconds`, type: 'gauge', help: 'When ssh-keys last answered (Unix time).', samples: [{ value: now / 1000 }] },
    {
      name: `${P}_cache_age_seconds`,
      type: 'gauge',
      help: 'Age of the key cache (time since it was read from IAM) at the last answer that used it.',
      samples: a.cacheFetchedAt === undefined ? [] : [{ value: Math.max(0, Math.round(now - a.cacheFetchedAt) / 1000) }],
    },
    {
      name: `${P}_cache_fetched_timestamp_seconds`,
      type: 'gauge',
      help: 'When the key cache used by the last answer was read from IAM (Unix time).',
      samples: a.cacheFetchedAt === undefined ? [] : [{ value: a.cacheFetchedAt / 1000 }],
    },
  ];
}

/** Count one answer when `dir` is set; never throws (a login never waits on metrics). */
export function countAnswer(dir: string | undefined, a: AnswerFacts, log: Logger): void {
  if (!dir) return;
  try {
    writeMetrics(dir, 'ssh-keys', answerFamilies(a), { keep: true, increments: true });
  } catch (err) {
    log.debug('cannot write the ssh-keys metrics', { dir, err: (err as Error).message });
  }
}
