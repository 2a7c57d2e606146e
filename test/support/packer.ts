// packer/ for the tests: Debian's packer 1.6.6 rejects the `required_plugins` block, so the tests
// work on a copy of packer/ without plugins.pkr.hcl, laid out as in the repo (package.json beside it,
// whose version names the default agent bundle). Also the variables of the local bake.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ROOT } from './processes';

/** The repo's packer/ directory. */
export const PACKER_DIR = path.join(ROOT, 'packer');

/** The version in package.json (the agent bundle's). */
export const PKG_VERSION = (JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

/** Environment for packer runs: no update check against checkpoint.hashicorp.com, no colours. */
export function packerEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { ...process.env, CHECKPOINT_DISABLE: '1', PACKER_NO_COLOR: '1', ...extra };
}

/**
 * A copy of packer/ without plugins.pkr.hcl in a fresh temp dir, with package.json beside it;
 * `placeholderBundle` also puts an empty file where the default agent_bundle points. Returns the
 * copy's packer/ directory.
 */
export function packerCopy(opts: { placeholderBundle?: boolean } = {}): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'det-packer-'));
  fs.cpSync(PACKER_DIR, path.join(root, 'packer'), { recursive: true, filter: (src) => path.basename(src) !== 'plugins.pkr.hcl' });
  fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(root, 'package.json'));
  if (opts.placeholderBundle) {
    fs.mkdirSync(path.join(root, 'dist'));
    fs.writeFileSync(path.join(root, 'dist', `det-agent-${PKG_VERSION}-linux-x64.tar.gz`), '');
  }
  return path.join(root, 'packer');
}

/** What test/env/setup.sh prepared for the local bake. */
export interface BakeEnv {
  /** Debian minbase + systemd, imported into the test dockerd (DET_TEST_BAKE_BASE_IMAGE). */
  baseImage: string;
  /** Flat apt repository with the packages packer/scripts install (DET_TEST_BAKE_APT_REPO). */
  aptRepo: string;
}

/** The bake's base image and apt repository; throws why when setup could not prepare them. */
export function bakeEnv(): BakeEnv {
  const failed = process.env.DET_TEST_BAKE_ERROR;
  if (failed) throw new Error(`test/env/setup.sh could not prepare the local bake: ${failed}`);
  const baseImage = process.env.DET_TEST_BAKE_BASE_IMAGE;
  const aptRepo = process.env.DET_TEST_BAKE_APT_REPO;
  if (!baseImage || !aptRepo) {
    throw new Error('DET_TEST_BAKE_BASE_IMAGE and DET_TEST_BAKE_APT_REPO are not set: run the tests with `npm test` (test/env/setup.sh prepares the bake base image and apt repository)');
  }
  if (!fs.existsSync(path.join(aptRepo, 'Packages'))) throw new Error(`${aptRepo}/Packages is missing: rerun test/env/setup.sh`);
  return { baseImage, aptRepo };
}
