// Replaced at bundle time by esbuild's `define`; the fallback is for tests run from source.
declare const __ZDT_VERSION__: string | undefined;
export const agentVersion: string = typeof __ZDT_VERSION__ === 'string' ? __ZDT_VERSION__ : '0.0.0-dev';
