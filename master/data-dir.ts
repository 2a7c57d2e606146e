// The master's data directory and the cluster join token kept in it.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DetError } from '../common/errors';

/** Creates the data dir if needed and proves it is writable; DET_ERR_DATA_DIR otherwise. */
export function ensureDataDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const probe = path.join(dir, `.write-probe-${process.pid}`);
    fs.writeFileSync(probe, '');
    fs.rmSync(probe);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new DetError('DET_ERR_DATA_DIR', `data dir ${dir} is not writable (${code}): choose another with --data-dir or DET_DATA_DIR, or fix its permissions`);
  }
}

/** File holding the generated cluster join token. */
export function agentTokenFile(dataDir: string): string {
  return path.join(dataDir, 'agent_token');
}

/** The configured token, else the one stored in the data dir, else a new one written there (mode 0600). */
export function resolveAgentToken(configured: string | undefined, dataDir: string): { token: string; source: string } {
  if (configured) return { token: configured, source: 'config' };
  const file = agentTokenFile(dataDir);
  try {
    const existing = fs.readFileSync(file, 'utf8').trim();
    if (existing.length >= 16) return { token: existing, source: file };
  } catch {
    // not there yet
  }
  const token = crypto.randomBytes(24).toString('base64url');
  fs.writeFileSync(file, token + '\n', { mode: 0o600 });
  return { token, source: `${file} (generated)` };
}
