import { defineConfig } from 'vitest/config';

// Integration tests start real servers (moto, IMDS mock, etcd, kube-apiserver) on loopback
// ports; each test file starts its own and ends them by PID. Two cores: keep the pool small.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    testTimeout: 60_000,
    hookTimeout: 180_000,
    teardownTimeout: 30_000,
    reporters: process.env.CI ? ['default', ['json', { outputFile: '.cache/vitest-report.json' }]] : ['default'],
  },
});
