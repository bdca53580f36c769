import { describe, expect, it } from 'vitest';
import { compareVersions, decideVersions, packageVersionFor, resolveConfiguredVersion } from '../../agent/boot/versions.js';
import { parseApkPolicy, upstreamVersion } from '../../agent/host/packages.js';

/** The Kubernetes version policy and the package source's answers, as pure functions. */

describe('Kubernetes version policy', () => {
  const offered = ['1.31.7-r0', '1.31.10-r1', '1.31.10-r0', '1.32.2-r0', '1.30.9-r3'];

  it("resolves '1.31.X' to the newest patch the package source offers; an exact version stays", () => {
    expect(resolveConfiguredVersion('1.31.X', offered)).toBe('1.31.10');
    expect(resolveConfiguredVersion('1.31.4', offered)).toBe('1.31.4');
    expect(() => resolveConfiguredVersion('1.33.X', offered)).toThrow(/offers no 1\.33 version/);
  });

  it('picks the newest package release of a version', () => {
    expect(packageVersionFor('1.31.10', offered)).toBe('1.31.10-r1');
    expect(packageVersionFor('1.31.8', offered)).toBeUndefined();
    expect(upstreamVersion('1.31.10-r1')).toBe('1.31.10');
    expect(compareVersions('1.31.10', '1.31.9')).toBeGreaterThan(0);
  });

  it('controller 00 installs what the cluster runs (the upgrade comes after the control plane), or the target for a new cluster', () => {
    expect(decideVersions({ firstController: true, desired: '1.31.10', cluster: undefined })).toEqual({ install: '1.31.10', cluster: undefined, desired: '1.31.10' });
    expect(decideVersions({ firstController: true, desired: '1.32.2', cluster: '1.31.10' })).toEqual({ install: '1.31.10', cluster: '1.31.10', desired: '1.32.2' });
    expect(decideVersions({ firstController: true, desired: undefined, cluster: '1.31.10' }).install).toBe('1.31.10');
  });

  it('never downgrades, never skips a minor, and needs some version', () => {
    expect(() => decideVersions({ firstController: true, desired: '1.31.7', cluster: '1.31.10' })).toThrow(expect.objectContaining({ code: 'KubernetesDowngradeRefused' }));
    expect(() => decideVersions({ firstController: true, desired: '1.33.0', cluster: '1.31.10' })).toThrow(expect.objectContaining({ code: 'KubernetesUpgradeTooFar' }));
    expect(() => decideVersions({ firstController: true, desired: undefined, cluster: undefined })).toThrow(expect.objectContaining({ code: 'KubernetesVersionUnknown' }));
  });

  it('every other node installs exactly the cluster version, whatever is configured', () => {
    expect(decideVersions({ firstController: false, desired: '1.32.2', cluster: '1.31.10' })).toEqual({ install: '1.31.10', cluster: '1.31.10', desired: undefined });
    expect(() => decideVersions({ firstController: false, desired: undefined, cluster: undefined })).toThrow(expect.objectContaining({ code: 'ClusterVersionUnknown' }));
  });

  it('reads apk policy output of several packages', () => {
    const text = 'kubeadm policy:\n  1.31.10-r1:\n    lib/apk/db/installed\n    https://dl-cdn.alpinelinux.org/alpine/v3.21/community\n  1.31.7-r0:\n    @kube https://repo/\nkubelet policy:\n  1.31.10-r1:\n    https://repo/\n';
    expect(parseApkPolicy(text)).toEqual(
      new Map([
        ['kubeadm', ['1.31.10-r1', '1.31.7-r0']],
        ['kubelet', ['1.31.10-r1']],
      ]),
    );
  });
});
