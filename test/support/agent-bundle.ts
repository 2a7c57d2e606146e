// The agent tarball (scripts/bundle-agent.ts) for the bundle and AMI bake tests: built once per
// test process from the code under test (never a stale dist/ leftover), and unpacked into clean
// temp dirs.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { bundleAgent, type AgentBundle } from '../../scripts/bundle-agent';

let built: Promise<AgentBundle> | undefined;

/** Builds dist/det-agent-<version>-linux-x64.tar.gz (once per process) and returns it. */
export function agentBundle(): Promise<AgentBundle> {
  built ??= bundleAgent();
  return built;
}

/** Unpacks the tarball into a fresh temp dir; returns the bundle's top directory. */
export function unpackBundle(bundle: AgentBundle, prefix = 'det-bundle-'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  execFileSync('tar', ['-xzf', bundle.tarball, '-C', dir]);
  return path.join(dir, bundle.dirName);
}

/** Every file below dir, relative and '/'-separated, sorted. */
export function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const e of fs.readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(r);
      else out.push(r);
    }
  };
  walk('');
  return out.sort();
}
