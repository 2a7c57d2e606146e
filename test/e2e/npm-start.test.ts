// End to end: the README's `npm start` (scripts/start-local.ts), static and --dynamic, on the
// test dockerd: it prints what it started, runs the example grid, and stops cleanly on Ctrl-C.
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { testEnv, waitFor } from '../support/env';
import { det, ROOT } from '../support/processes';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** Whether a process with this pid is still alive. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Pids of det-master/det-agent processes whose environment or arguments name `dataDir`. */
function detProcessesOf(dataDir: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${entry}/cmdline`, 'latin1');
      const env = fs.readFileSync(`/proc/${entry}/environ`, 'latin1');
      if (/det-(master|agent)\.js/.test(cmd) && (cmd.includes(dataDir) || env.includes(dataDir))) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

describe('e2e: npm start', function () {
  this.timeout(120_000);
  const env = testEnv();
  let child: ChildProcess | undefined;
  afterEach(() => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
  });

  for (const mode of ['static', 'dynamic'] as const) {
    it(`${mode}: prints what it started, runs examples/hello/grid.yaml, stops everything on Ctrl-C`, async () => {
      const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), `det-e2e-start-${mode}-`));
      const port = await freePort();
      let out = '';
      child = spawn(process.execPath, [path.join(ROOT, 'dist/scripts/start-local.js'), ...(mode === 'dynamic' ? ['--dynamic'] : [])], {
        env: { ...process.env, DOCKER_HOST: `unix://${env.dockerSocket}`, DET_PORT: String(port), DET_DATA_DIR: dataDir },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stdout!.on('data', (d) => (out += d));
      child.stderr!.on('data', (d) => (out += d));
      await waitFor(() => /Stop with Ctrl-C/.test(out) || child!.exitCode !== null, { what: 'npm start to be ready', timeoutMs: 60_000 });
      assert.equal(child.exitCode, null, out);
      assert.match(out, new RegExp(`master\\s+127\\.0\\.0\\.1:${port}`));
      assert.ok(out.includes(dataDir), 'it prints the data dir');
      assert.match(out, mode === 'dynamic' ? /agents\s+none yet/ : /agent\s+\S+ registered with master/);

      const m = ['-m', `127.0.0.1:${port}`];
      const r = await det([...m, 'experiment', 'create', path.join(ROOT, 'examples/hello/grid.yaml'), '--follow']);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /Experiment \d+ ended: COMPLETED/);
      if (mode === 'dynamic') {
        const status = JSON.parse((await det([...m, '--json', 'provisioner', 'status'])).stdout);
        assert.equal(status[0].provider, 'local');
        assert.ok(status[0].instances.length >= 1);
      }
      const pids = detProcessesOf(dataDir);
      assert.ok(pids.length >= 2, `master and agent(s) run: ${pids.join(',')}`);

      child.kill('SIGINT');
      const code = await new Promise<number | null>((resolve) => child!.once('exit', (c) => resolve(c)));
      assert.equal(code, 0, out);
      await waitFor(() => pids.every((p) => !alive(p)), { what: 'every det process of this cluster to exit', timeoutMs: 30_000 });
    });
  }
});
