// Makes sure the image the examples use (det-examples/busybox:latest) exists
// in the local Docker: pulled from Docker Hub's busybox when the registry is
// reachable, else imported from the host's static busybox (Debian's
// busybox-static), so the examples also run on machines without internet.
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import Docker from 'dockerode';

/** The image examples/hello/*.yaml run. */
export const EXAMPLE_IMAGE = 'det-examples/busybox:latest';

/** Returns how the image was obtained: 'present', 'pulled', 'imported'; throws with advice if impossible. */
export async function ensureExampleImage(docker: Docker, log: (line: string) => void): Promise<'present' | 'pulled' | 'imported'> {
  try {
    await docker.getImage(EXAMPLE_IMAGE).inspect();
    return 'present';
  } catch {
    // not there yet
  }
  const busybox = ['/bin/busybox', '/usr/bin/busybox'].find((p) => fs.existsSync(p) && isStatic(p));
  if (busybox) {
    log(`building ${EXAMPLE_IMAGE} from the host's static ${busybox}`);
    await importFromBusybox(docker, busybox);
    return 'imported';
  }
  log(`pulling busybox:latest for ${EXAMPLE_IMAGE}`);
  try {
    const stream = await docker.pull('busybox:latest');
    await new Promise<void>((resolve, reject) => docker.modem.followProgress(stream, (err: Error | null) => (err ? reject(err) : resolve())));
    await docker.getImage('busybox:latest').tag({ repo: 'det-examples/busybox', tag: 'latest' });
    return 'pulled';
  } catch (err) {
    throw new Error(`cannot provide ${EXAMPLE_IMAGE}: pulling busybox failed (${(err as Error).message}) and no static busybox is installed (apt-get install busybox-static)`);
  }
}

/** A static ELF has no PT_INTERP, so no dynamic loader path in its first pages. */
function isStatic(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(4096);
    fs.readSync(fd, buf, 0, buf.length, 0);
    return buf.subarray(0, 4).toString('latin1') === '\x7fELF' && !buf.includes('/lib64/ld-linux') && !buf.includes('/lib/ld-linux');
  } finally {
    fs.closeSync(fd);
  }
}

async function importFromBusybox(docker: Docker, busybox: string): Promise<void> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'det-example-rootfs-'));
  try {
    for (const d of ['bin', 'tmp', 'etc']) fs.mkdirSync(path.join(root, d));
    fs.copyFileSync(busybox, path.join(root, 'bin', 'busybox'));
    fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
    const applets = await output(busybox, ['--list']);
    for (const a of applets.split('\n').map((s) => s.trim()).filter((s) => s && s !== 'busybox')) fs.symlinkSync('busybox', path.join(root, 'bin', a));
    fs.writeFileSync(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    const tar = spawn('tar', ['-C', root, '-c', '.'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const res = await docker.importImage(tar.stdout, { repo: 'det-examples/busybox', tag: 'latest' });
    await new Promise<void>((resolve, reject) => docker.modem.followProgress(res, (err: Error | null) => (err ? reject(err) : resolve())));
    await docker.getImage(EXAMPLE_IMAGE).inspect();
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

function output(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited with ${code}`))));
  });
}
