// `npm start`: a local cluster — det-master on SQLite under ./.det plus one
// det-agent on the local Docker — in the foreground until Ctrl-C.
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import Docker from 'dockerode';
import { DockerRuntime } from '../agent/containers/docker';
import { errorMessage } from '../common/errors';
import { ensureExampleImage } from './example-image';

const ROOT = path.resolve(__dirname, '..', '..');
const DATA_DIR = path.resolve(process.env.DET_DATA_DIR ?? path.join(ROOT, '.det'));
const PORT = Number(process.env.DET_PORT ?? 8080);
const HOST = process.env.DET_HOST ?? '127.0.0.1';
const SOCKET = process.env.DOCKER_HOST?.startsWith('unix://') ? process.env.DOCKER_HOST.slice('unix://'.length) : process.env.DET_DOCKER_SOCKET ?? '/var/run/docker.sock';
/** `npm start -- --dynamic`: no static agent; the master launches local agents on demand and stops idle ones. */
const DYNAMIC = process.argv.includes('--dynamic');

/** Master config of the dynamic mode: one pool whose "instances" are local det-agent processes. */
function dynamicConfig(): string {
  const file = path.join(DATA_DIR, 'master-dynamic.yaml');
  fs.writeFileSync(
    file,
    [
      '# Written by `npm start -- --dynamic`: agents are launched on demand as local processes.',
      'resource_pools:',
      '  - pool_name: default',
      '    provider:',
      '      type: local',
      '      slots_per_instance: 1',
      '      max_instances: 3',
      '      max_idle_agent_period: 30s',
      '      max_agent_starting_period: 2m',
      `      docker_socket: ${SOCKET}`,
      '',
    ].join('\n'),
  );
  return file;
}

function say(line: string): void {
  process.stdout.write(line + '\n');
}

/** Starts a det process with its logs in a file; resolves when `ready` appears on its stdout. */
function startProcess(name: string, args: string[], env: NodeJS.ProcessEnv, ready: RegExp, logFile: string): Promise<{ child: ChildProcess; line: string }> {
  const log = fs.openSync(logFile, 'a');
  // Own process group: Ctrl-C reaches only this script, which then stops the children once, in order.
  const child = spawn(process.execPath, [path.join(ROOT, 'bin', `${name}.js`), ...args], { env, stdio: ['ignore', 'pipe', log], detached: true });
  return new Promise((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      fs.appendFileSync(logFile, d);
      buf += d.toString();
      const m = buf.split('\n').find((l) => ready.test(l));
      if (m) resolve({ child, line: m });
    });
    child.on('exit', (code) => reject(new Error(`${name} exited with code ${code} before it was ready; last lines of ${logFile}:\n${tail(logFile)}`)));
  });
}

function tail(file: string, n = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n).map((l) => '  ' + l).join('\n');
  } catch {
    return '  (no log)';
  }
}

async function main(): Promise<number> {
  try {
    await new DockerRuntime({ socketPath: SOCKET }).ping();
  } catch (err) {
    say(`npm start: ${errorMessage(err)}`);
    say(`  Start Docker (e.g. \`sudo systemctl start docker\`, or run dockerd yourself) or point DOCKER_HOST=unix:///path/to/docker.sock at a running one.`);
    return 1;
  }
  fs.mkdirSync(path.join(DATA_DIR, 'logs'), { recursive: true });
  try {
    const how = await ensureExampleImage(new Docker({ socketPath: SOCKET }), (l) => say(`npm start: ${l}`));
    if (how !== 'present') say(`npm start: example image ready (${how})`);
  } catch (err) {
    say(`npm start: warning: ${errorMessage(err)}; examples/ will fail until the image exists`);
  }

  const masterLog = path.join(DATA_DIR, 'logs', 'master.log');
  const agentLog = path.join(DATA_DIR, 'logs', 'agent.log');
  const children: ChildProcess[] = [];
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) {
      say('npm start: stopping now (forced)');
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      process.exit(code || 130);
    }
    stopping = true;
    say('npm start: stopping (Ctrl-C again to force)...');
    for (const c of [...children].reverse()) {
      if (c.exitCode !== null || c.signalCode !== null) continue;
      const exited = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 90_000))]);
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
    process.exit(code);
  };
  process.on('SIGINT', () => void stop(0));
  process.on('SIGTERM', () => void stop(0));

  try {
    const masterArgs = ['--host', HOST, '--port', String(PORT), '--data-dir', DATA_DIR, ...(DYNAMIC ? ['--config-file', dynamicConfig()] : [])];
    const master = await startProcess('det-master', masterArgs, process.env, /^det-master listening on /, masterLog);
    children.push(master.child);
    if (DYNAMIC) {
      say('');
      say('Local Determined cluster is running with dynamic agents.');
      say(`  master    ${master.line.replace('det-master listening on ', '')}`);
      say(`  agents    none yet: the master starts up to 3 local det-agent processes when work is queued,`);
      say(`            and stops each after 30s idle (logs in ${path.join(DATA_DIR, 'provisioner')})`);
      say(`  docker    ${SOCKET}`);
      say(`  data dir  ${DATA_DIR}`);
      say(`  logs      ${masterLog}`);
      say('');
      say('Try:');
      say('  npx det experiment create examples/hello/grid.yaml --follow');
      say('  npx det provisioner status        # instances, their agents, idle time');
      say('');
      say('Stop with Ctrl-C.');
      master.child.on('exit', (code) => {
        if (stopping) return;
        say(`npm start: det-master exited unexpectedly (code ${code}); last lines of its log:\n${tail(masterLog)}`);
        void stop(1);
      });
      return await new Promise<number>(() => undefined);
    }
    const token = fs.readFileSync(path.join(DATA_DIR, 'agent_token'), 'utf8').trim();
    const agentEnv = { ...process.env, DET_AGENT_TOKEN: process.env.DET_AGENT_TOKEN ?? token };
    const agent = await startProcess('det-agent', ['--master-host', HOST, '--master-port', String(PORT), '--docker-socket', SOCKET], agentEnv, /^det-agent .* registered with master/, agentLog);
    children.push(agent.child);
    say('');
    say('Local Determined cluster is running.');
    say(`  master    ${master.line.replace('det-master listening on ', '')}`);
    say(`  agent     ${agent.line.replace(/^det-agent /, '')}`);
    say(`  docker    ${SOCKET}`);
    say(`  data dir  ${DATA_DIR} (SQLite: determined.db, cluster join token: agent_token)`);
    say(`  logs      ${masterLog}`);
    say(`            ${agentLog}`);
    say('');
    say('Try:');
    say('  npx det master info');
    say('  npx det agent list');
    say('  npx det experiment create examples/hello/grid.yaml --follow');
    say('');
    say('Stop with Ctrl-C (the agent stops its task containers, then the master exits).');
    for (const c of children) {
      c.on('exit', (code) => {
        if (stopping) return;
        const name = c === master.child ? 'det-master' : 'det-agent';
        say(`npm start: ${name} exited unexpectedly (code ${code}); last lines of its log:\n${tail(name === 'det-master' ? masterLog : agentLog)}`);
        void stop(1);
      });
    }
    return await new Promise<number>(() => undefined);
  } catch (err) {
    say(`npm start: ${errorMessage(err)}`);
    await stop(1);
    return 1;
  }
}

main().then((code) => process.exit(code));
