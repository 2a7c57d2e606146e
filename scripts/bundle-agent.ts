// `npm run bundle:agent`: the self-contained agent tarball for the AMI (packer/).
//
//   dist/det-agent-<version>-linux-x64.tar.gz
//     det-agent-<version>-linux-x64/bin/det-agent      launcher (POSIX sh): lib/node lib/det-agent.js "$@"
//     det-agent-<version>-linux-x64/lib/det-agent.js   agent/main.ts and its dependencies in one file (esbuild)
//     det-agent-<version>-linux-x64/lib/node           the Node binary running this build (process.execPath)
//     det-agent-<version>-linux-x64/lib/node.LICENSE   Node's license, when found next to that binary
//
// The bundle has the version, the git commit and the .proto definitions built in (esbuild
// defines read by common/types.ts and common/proto/load.ts), so it needs no package.json,
// proto/ or node_modules at run time. ssh2 (ssh:// Docker hosts, which pulls the optional native
// cpu-features) is replaced by a stub; the build fails if a master-only or native module
// (better-sqlite3, bindings, *.node) would end up in the bundle.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as esbuild from 'esbuild';
import { LOADER_OPTIONS, PROTO_FILES, PROTO_ROOT } from '../common/proto/load';

/** Repo root (this file runs from dist/scripts). */
const ROOT = path.resolve(__dirname, '..', '..');

/** What the bundle script produced. */
export interface AgentBundle {
  /** The tarball. */
  tarball: string;
  /** Top-level directory inside it, e.g. det-agent-0.1.0-linux-x64. */
  dirName: string;
  version: string;
  commit: string;
  /** Size of lib/det-agent.js in bytes. */
  jsBytes: number;
}

/** The launcher: resolves its own location (symlinks included) and runs the bundled Node on the bundle. */
export const LAUNCHER = `#!/bin/sh
# det-agent launcher (scripts/bundle-agent.ts): runs the bundled agent on the bundled Node runtime,
# so the host needs no Node installation.
set -eu
self=$0
# Through a symlink (e.g. /usr/local/bin/det-agent), find the real file; shell builtins otherwise.
if [ -L "$self" ] && command -v readlink >/dev/null 2>&1; then self=$(readlink -f "$self"); fi
case $self in
  */*) bin=\${self%/*} ;;
  *) bin=. ;;
esac
exec "$bin/../lib/node" "$bin/../lib/det-agent.js" "$@"
`;

/** Modules the agent must never bundle: master-only or native. */
const FORBIDDEN = [/node_modules\/better-sqlite3\//, /node_modules\/bindings\//, /node_modules\/cpu-features\//, /\.node$/, /^master\//];

/** ssh2 replaced: docker-modem requires it at load time, the agent only talks to a unix socket or tcp. */
const SSH2_STUB = `
class Client {
  constructor() {
    throw new Error('ssh:// Docker hosts are not supported by the det-agent bundle: use a unix socket or tcp:// (docker_socket / DOCKER_HOST)');
  }
}
module.exports = { Client };
`;

function git(args: string[]): string | undefined {
  try {
    return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

/** The commit: $DET_BUILD_COMMIT, else git HEAD (with "-dirty" when tracked files changed), else "unknown". */
export function buildCommit(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DET_BUILD_COMMIT) return env.DET_BUILD_COMMIT;
  const head = git(['rev-parse', 'HEAD']);
  if (!head) return 'unknown';
  const dirty = git(['status', '--porcelain', '--untracked-files=no']);
  return dirty ? `${head}-dirty` : head;
}

/** The .proto files as protobufjs JSON, loaded with the same options as common/proto/load.ts. */
function protoJson(): unknown {
  // proto-loader's own loader (keepCase etc. are applied while parsing), then serialized.
  const util = require('@grpc/proto-loader/build/src/util') as {
    loadProtosWithOptionsSync(files: string[], opts: object): { toJSON(): unknown };
  };
  return util.loadProtosWithOptionsSync([PROTO_FILES.agent, PROTO_FILES.api], { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] }).toJSON();
}

function nodeLicense(): string | undefined {
  const bin = path.dirname(process.execPath);
  const candidates = [path.join(bin, '..', 'LICENSE'), path.join(bin, '..', 'share', 'doc', 'nodejs', 'LICENSE'), '/usr/share/doc/nodejs/LICENSE'];
  return candidates.find((f) => fs.existsSync(f));
}

/** Builds the tarball into outDir (default dist/). */
export async function bundleAgent(outDir = path.join(ROOT, 'dist')): Promise<AgentBundle> {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error(`the agent bundle is built for linux-x64 with the Node that runs this script, but this is ${process.platform}-${process.arch}: build on a linux-x64 machine`);
  }
  const major = Number(process.versions.node.split('.')[0]);
  if (major !== 20) throw new Error(`the agent bundle must carry Node 20 (this repo's runtime), but this is Node ${process.versions.node}`);
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const version = pkg.version;
  const commit = buildCommit();
  const dirName = `det-agent-${version}-linux-x64`;
  const tarball = path.join(outDir, `${dirName}.tar.gz`);

  const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'det-agent-bundle-'));
  try {
    const top = path.join(stage, dirName);
    fs.mkdirSync(path.join(top, 'bin'), { recursive: true });
    fs.mkdirSync(path.join(top, 'lib'), { recursive: true });
    const js = path.join(top, 'lib', 'det-agent.js');
    const result = await esbuild.build({
      stdin: { contents: "require('./agent/main').run(process.argv.slice(2));\n", resolveDir: ROOT, sourcefile: 'det-agent-entry.js', loader: 'js' },
      bundle: true,
      platform: 'node',
      target: 'node20',
      format: 'cjs',
      outfile: js,
      metafile: true,
      logLevel: 'silent',
      banner: { js: `// det-agent ${version} (commit ${commit}): generated by scripts/bundle-agent.ts; do not edit.` },
      define: {
        __DET_VERSION__: JSON.stringify(version),
        __DET_COMMIT__: JSON.stringify(commit),
        __DET_PROTO_JSON__: JSON.stringify(protoJson()),
      },
      plugins: [
        {
          name: 'det-stubs',
          setup(build) {
            build.onResolve({ filter: /^ssh2$/ }, () => ({ path: 'ssh2', namespace: 'det-stub' }));
            build.onLoad({ filter: /.*/, namespace: 'det-stub' }, () => ({ contents: SSH2_STUB, loader: 'js' }));
          },
        },
      ],
    });
    for (const w of result.warnings) process.stderr.write(`bundle-agent: esbuild warning: ${w.text}${w.location ? ` (${w.location.file}:${w.location.line})` : ''}\n`);
    const inputs = Object.keys(result.metafile.inputs);
    const forbidden = inputs.filter((i) => FORBIDDEN.some((re) => re.test(i)));
    if (forbidden.length > 0) throw new Error(`the agent bundle must not contain master-only or native modules, but it has: ${forbidden.join(', ')}`);

    const launcher = path.join(top, 'bin', 'det-agent');
    fs.writeFileSync(launcher, LAUNCHER, { mode: 0o755 });
    fs.chmodSync(launcher, 0o755);
    fs.copyFileSync(process.execPath, path.join(top, 'lib', 'node'));
    fs.chmodSync(path.join(top, 'lib', 'node'), 0o755);
    fs.chmodSync(js, 0o644);
    const license = nodeLicense();
    if (license) fs.copyFileSync(license, path.join(top, 'lib', 'node.LICENSE'));
    else process.stderr.write(`bundle-agent: warning: no LICENSE found next to ${process.execPath}; the tarball carries Node without its license file\n`);

    fs.mkdirSync(outDir, { recursive: true });
    const tmpTar = `${tarball}.${process.pid}.tmp`;
    // Root-owned, name-sorted entries: the tarball's listing does not depend on who built it.
    execFileSync('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '-czf', tmpTar, '-C', stage, dirName], { stdio: ['ignore', 'ignore', 'inherit'] });
    fs.renameSync(tmpTar, tarball);
    return { tarball, dirName, version, commit, jsBytes: fs.statSync(js).size };
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
}

if (require.main === module) {
  bundleAgent(process.argv[2] ? path.resolve(process.argv[2]) : undefined).then(
    (b) => {
      const mib = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MiB`;
      process.stdout.write(`${path.relative(process.cwd(), b.tarball) || b.tarball}: det-agent ${b.version} (commit ${b.commit}), ${mib(fs.statSync(b.tarball).size)} (det-agent.js ${mib(b.jsBytes)})\n`);
    },
    (err: unknown) => {
      process.stderr.write(`bundle-agent: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
