// Benchmark: checkpoint upload throughput. 1 GiB of checkpoint data (a few large files and 2,000
// small ones, random content) uploaded to the test environment's s3rver three ways in the same
// run: our CheckpointUploader (S3Storage), `aws s3 sync` and `rclone sync`, each to its own
// prefix. Then each uploads the unchanged data again: ours as a new checkpoint of the same
// directory through the same uploader (dedupe + hash cache), the tools as a second sync.
//
// Usage: npm run bench:s3-sync [-- --rounds N] [-- --file-concurrency N] [-- --multipart-threshold-mib N] [-- --json]
// (package.json runs this under test/env/with-testenv.sh, which provides s3rver.)
// Exits 0 whether or not the targets are met; non-zero only when something broke.
import { spawn, spawnSync } from 'node:child_process';
import { randomFillSync, randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { CreateBucketCommand, DeleteBucketCommand, DeleteObjectsCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { HashCache } from '../agent/checkpoints/hash-cache';
import { CheckpointUploader } from '../agent/checkpoints/uploader';
import { COMPLETE_MARKER } from '../common/checkpoints/contract';
import { createLogger } from '../common/log';
import { S3Storage } from '../common/storage';
import { DEFAULT_MULTIPART_THRESHOLD_BYTES, PART_SIZE, QUEUE_SIZE } from '../common/storage/s3';
import { s3TestProcessEnv } from '../test/support/awscli';
import { testEnv } from '../test/support/env';
import { S3_TEST_REGION, S3RVER_CREDENTIALS } from '../test/support/s3';
import { exitOnHelp, intOptions } from './options';

/** Our throughput must be at least this multiple of awscli's. */
const TARGET_RATIO_VS_AWSCLI = 1.5;
/** Re-uploading unchanged data may take at most this fraction of the full upload. */
const TARGET_RESYNC_FRACTION = 0.05;
/** s3rver's fixed credentials and the region we sign for. */
const CREDENTIALS = S3RVER_CREDENTIALS;
const REGION = S3_TEST_REGION;
const MiB = 1024 * 1024;
/** A tool run that takes longer than this is an error, not a sample. */
const RUN_TIMEOUT_MS = 30 * 60_000;

/** Command-line options. */
interface Options {
  sizeMiB: number;
  smallFiles: number;
  smallKiB: number;
  largeFiles: number;
  fileConcurrency: number;
  /** S3Storage's multipart threshold in MiB; undefined: its default. */
  multipartThresholdMiB?: number;
  rounds: number;
  json: boolean;
}

const USAGE = `usage: node dist/bench/s3-sync.js [options]
  --size-mib N          total data (default 1024)
  --small-files N       number of small files (default 2000)
  --small-kib N         size of each small file in KiB (default 100); the large files share the rest
  --large-files N       number of large files (default 4)
  --file-concurrency N  our uploader's files in flight (default 16, the uploader's default)
  --multipart-threshold-mib N
                        our files above N MiB go multipart, smaller ones as one PUT
                        (default: S3Storage's, 256; 8 is awscli's threshold)
  --rounds N            full upload + re-sync rounds of each tool, interleaved (default 1)
  --json                print only one JSON object on stdout (progress goes to stderr)`;

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      'size-mib': { type: 'string' },
      'small-files': { type: 'string' },
      'small-kib': { type: 'string' },
      'large-files': { type: 'string' },
      'file-concurrency': { type: 'string' },
      'multipart-threshold-mib': { type: 'string' },
      rounds: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  exitOnHelp(values.help, USAGE);
  const int = intOptions(USAGE);
  const o: Options = {
    sizeMiB: int('size-mib', values['size-mib'], 1024, 1),
    smallFiles: int('small-files', values['small-files'], 2000, 0),
    smallKiB: int('small-kib', values['small-kib'], 100, 1),
    largeFiles: int('large-files', values['large-files'], 4, 1),
    fileConcurrency: int('file-concurrency', values['file-concurrency'], 16, 1),
    multipartThresholdMiB: values['multipart-threshold-mib'] === undefined ? undefined : int('multipart-threshold-mib', values['multipart-threshold-mib'], 0, 0),
    rounds: int('rounds', values.rounds, 1, 1),
    json: values.json ?? false,
  };
  if (o.smallFiles * o.smallKiB * 1024 >= o.sizeMiB * MiB) throw new Error(`the small files alone (${o.smallFiles} x ${o.smallKiB} KiB) exceed --size-mib ${o.sizeMiB}`);
  return o;
}

/** Progress and diagnostics: always stderr, so --json keeps stdout clean. */
function note(msg: string): void {
  process.stderr.write(`[bench] ${msg}\n`);
}

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/** What was generated. */
interface Dataset {
  dir: string;
  files: number;
  bytes: number;
}

/** Writes a completed checkpoint of random content: the large files, then the small ones. */
function generate(root: string, o: Options): Dataset {
  const dir = path.join(root, 'ckpt');
  fs.mkdirSync(dir, { recursive: true });
  const smallBytes = o.smallKiB * 1024;
  const largeTotal = o.sizeMiB * MiB - o.smallFiles * smallBytes;
  const block = Buffer.alloc(MiB);
  let bytes = 0;
  for (let i = 0; i < o.largeFiles; i++) {
    const size = Math.floor(largeTotal / o.largeFiles) + (i === 0 ? largeTotal % o.largeFiles : 0);
    const fd = fs.openSync(path.join(dir, `model-shard-${i}.bin`), 'w');
    try {
      for (let off = 0; off < size; off += block.length) {
        const n = Math.min(block.length, size - off);
        randomFillSync(block, 0, n);
        fs.writeSync(fd, block, 0, n);
      }
    } finally {
      fs.closeSync(fd);
    }
    bytes += size;
  }
  const small = Buffer.alloc(smallBytes);
  for (let i = 0; i < o.smallFiles; i++) {
    const sub = path.join(dir, 'state', String(Math.floor(i / 100)).padStart(3, '0'));
    if (i % 100 === 0) fs.mkdirSync(sub, { recursive: true });
    randomFillSync(small);
    fs.writeFileSync(path.join(sub, `part-${String(i).padStart(5, '0')}.pt`), small);
    bytes += smallBytes;
  }
  fs.writeFileSync(path.join(dir, COMPLETE_MARKER), '');
  return { dir, files: o.largeFiles + o.smallFiles, bytes };
}

// ---------------------------------------------------------------------------------------------
// The three uploaders
// ---------------------------------------------------------------------------------------------

/** Runs a CLI; resolves on exit 0, rejects with its stderr otherwise. */
function runTool(bin: string, args: string[], env: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'], env });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), RUN_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${bin} (is it installed? test/env/setup.sh installs awscli and rclone): ${err.message}`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`${bin} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim().slice(-2000)}`));
    });
  });
}

function awsEnv(): NodeJS.ProcessEnv {
  return { ...process.env, ...s3TestProcessEnv() };
}

/** rclone with a remote named "bench" configured entirely through the environment. */
function rcloneEnv(endpoint: string, configFile: string): NodeJS.ProcessEnv {
  // rclone's S3 backend reads AWS_CA_BUNDLE and then refuses its own HTTP transport: the
  // endpoint is plain http, so leave every AWS_* variable out.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('AWS_')));
  return {
    ...inherited,
    RCLONE_CONFIG: configFile,
    RCLONE_CONFIG_BENCH_TYPE: 's3',
    RCLONE_CONFIG_BENCH_PROVIDER: 'Other',
    RCLONE_CONFIG_BENCH_ENV_AUTH: 'false',
    RCLONE_CONFIG_BENCH_ACCESS_KEY_ID: CREDENTIALS.accessKeyId,
    RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY: CREDENTIALS.secretAccessKey,
    RCLONE_CONFIG_BENCH_REGION: REGION,
    RCLONE_CONFIG_BENCH_ENDPOINT: endpoint,
    RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE: 'true',
    RCLONE_CONFIG_BENCH_NO_CHECK_BUCKET: 'true',
  };
}

/** One tool's full upload and unchanged re-sync: wall seconds, and CPU seconds of the tool and of s3rver during the full upload. */
interface ToolRun {
  fullS: number;
  resyncS: number;
  clientCpuS: number;
  serverCpuS?: number;
}

// ---------------------------------------------------------------------------------------------
// CPU accounting: on 2 cores the tools and s3rver compete for CPU, so CPU seconds explain the
// wall times. Ours: process.cpuUsage() (all threads). The CLIs: this process's reaped-children
// time from /proc/self/stat. s3rver: its /proc/<pid>/stat, when test/env left a pid file.
// ---------------------------------------------------------------------------------------------

/** Linux USER_HZ: /proc times are in 1/100 s. */
const CLOCK_TICKS = 100;

function procCpuSeconds(pid: number | 'self', children: boolean): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // After the comm field: utime, stime, cutime, cstime are fields 12-15 (0-based 11-14).
    const ticks = children ? Number(f[13]) + Number(f[14]) : Number(f[11]) + Number(f[12]);
    return ticks / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

function s3rverPid(): number | undefined {
  try {
    const pid = Number(fs.readFileSync(path.join(process.env.DET_TESTENV_DIR ?? '/tmp/det-testenv', 's3rver.pid'), 'utf8').trim());
    return Number.isInteger(pid) && procCpuSeconds(pid, false) !== undefined ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** CPU seconds used by `what` while `fn` runs. */
/**
 * Writes dirty pages back to disk (sync(1)), untimed, before each measured upload: without it the
 * kernel writes the previous upload's gigabyte (s3rver's objects) back while the next tool runs,
 * and that tool pays for it in wall time and CPU (every tool but the first of a run did).
 */
function settleWrites(): void {
  const r = spawnSync('sync', [], { stdio: 'ignore', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`sync failed: ${r.error?.message ?? `exit ${r.status}`}`);
}

async function measureCpu<T>(fn: () => Promise<T>, server: number | undefined): Promise<{ value: T; wallS: number; selfCpuS: number; childCpuS: number; serverCpuS?: number }> {
  settleWrites();
  const self0 = process.cpuUsage();
  const child0 = procCpuSeconds('self', true) ?? 0;
  const server0 = server === undefined ? undefined : procCpuSeconds(server, false);
  const t0 = performance.now();
  const value = await fn();
  const wallS = seconds(t0);
  const self = process.cpuUsage(self0);
  const server1 = server === undefined ? undefined : procCpuSeconds(server, false);
  return {
    value,
    wallS,
    selfCpuS: (self.user + self.system) / 1e6,
    childCpuS: (procCpuSeconds('self', true) ?? 0) - child0,
    serverCpuS: server0 !== undefined && server1 !== undefined ? server1 - server0 : undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// Bucket helpers (a plain S3 client, to check and clean up behind the tools' backs)
// ---------------------------------------------------------------------------------------------

async function listPrefix(client: S3Client, bucket: string, prefix: string): Promise<{ keys: string[]; bytes: number }> {
  const keys: string[] = [];
  let bytes = 0;
  let token: string | undefined;
  do {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    for (const o of page.Contents ?? []) {
      keys.push(o.Key!);
      bytes += o.Size ?? 0;
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token);
  return { keys, bytes };
}

async function deletePrefix(client: S3Client, bucket: string, prefix: string): Promise<void> {
  const { keys } = await listPrefix(client, bucket, prefix);
  for (let i = 0; i < keys.length; i += 1000) {
    await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys.slice(i, i + 1000).map((Key) => ({ Key })), Quiet: true } }));
  }
}

/** Checks that a tool stored every file with every byte; a benchmark of a no-op is worthless. */
async function expectStored(client: S3Client, bucket: string, prefix: string, data: Dataset, extraFiles: number, what: string): Promise<void> {
  const got = await listPrefix(client, bucket, prefix);
  if (got.keys.length !== data.files + extraFiles || got.bytes < data.bytes) {
    throw new Error(`${what} stored ${got.keys.length} objects / ${got.bytes} bytes under ${prefix}, expected ${data.files + extraFiles} / >= ${data.bytes}`);
  }
}

const seconds = (t0: number) => (performance.now() - t0) / 1000;
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (n: number, digits: number) => Math.round(n * 10 ** digits) / 10 ** digits;

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const opts = parseOptions(process.argv.slice(2));
  const endpoint = testEnv().s3Endpoint;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'det-bench-s3-sync-'));
  const client = new S3Client({ endpoint, region: REGION, forcePathStyle: true, credentials: CREDENTIALS });
  const bucket = `det-bench-s3-sync-${randomUUID().slice(0, 8)}`;
  const rcloneConfig = path.join(work, 'rclone.conf');
  fs.writeFileSync(rcloneConfig, '');
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const checkInterrupted = () => {
    if (interrupted) throw new Error('interrupted');
  };
  try {
    const loadBefore = os.loadavg()[0];
    note(`generating ${opts.sizeMiB} MiB: ${opts.largeFiles} large files + ${opts.smallFiles} x ${opts.smallKiB} KiB in ${work}`);
    const data = generate(work, opts);
    await client.send(new CreateBucketCommand({ Bucket: bucket }));

    const ours: ToolRun[] = [];
    const aws: ToolRun[] = [];
    const rclone: ToolRun[] = [];
    const hashStats: { hits: number; misses: number }[] = [];
    const server = s3rverPid();
    const threshold = opts.multipartThresholdMiB === undefined ? DEFAULT_MULTIPART_THRESHOLD_BYTES : opts.multipartThresholdMiB * MiB;
    const describe = (name: string, r: number, run: ToolRun, resyncWhat: string) =>
      note(
        `round ${r + 1}: ${name.padEnd(7)} ${run.fullS.toFixed(2)} s (${(data.bytes / 1e6 / run.fullS).toFixed(1)} MB/s, CPU ${run.clientCpuS.toFixed(1)} s` +
          `${run.serverCpuS !== undefined ? `, s3rver CPU ${run.serverCpuS.toFixed(1)} s` : ''}), ${resyncWhat} ${run.resyncS.toFixed(3)} s`,
      );
    // Ours: one uploader per round, as for one trial allocation.
    const runAgent = async (r: number): Promise<void> => {
      const storage = new S3Storage({
        bucket,
        prefix: `agent-${r}`,
        endpointUrl: endpoint,
        forcePathStyle: true,
        region: REGION,
        credentials: CREDENTIALS,
        multipartThresholdBytes: threshold,
      });
      try {
        const hashCache = new HashCache();
        const up = new CheckpointUploader({ storage, log: createLogger('bench', { level: 'warn' }), fileConcurrency: opts.fileConcurrency, hashCache });
        const info = () => ({ uuid: randomUUID(), trialId: 1, allocationId: 'bench', name: 'bench', createdAtMs: Date.now() });
        const full = await measureCpu(() => up.upload(data.dir, info()), server);
        await expectStored(client, bucket, `agent-${r}/${full.value.manifest.uuid}/`, data, 1, 'our uploader');
        const before = { ...hashCache.stats };
        const t0 = performance.now();
        const again = await up.upload(data.dir, info());
        const resyncS = seconds(t0);
        if (again.uploadedFiles !== 0) throw new Error(`the unchanged re-upload uploaded ${again.uploadedFiles} files`);
        hashStats.push({ hits: hashCache.stats.hits - before.hits, misses: hashCache.stats.misses - before.misses });
        ours.push({ fullS: full.wallS, resyncS, clientCpuS: full.selfCpuS, serverCpuS: full.serverCpuS });
        describe('agent', r, ours[ours.length - 1], 'unchanged re-upload');
      } finally {
        storage.destroy();
      }
    };
    const runAws = async (r: number): Promise<void> => {
      const awsArgs = ['s3', 'sync', data.dir, `s3://${bucket}/awscli-${r}/`, '--endpoint-url', endpoint, '--only-show-errors', '--no-progress'];
      const full = await measureCpu(() => runTool('aws', awsArgs, awsEnv()), server);
      await expectStored(client, bucket, `awscli-${r}/`, data, 1, 'aws s3 sync');
      const t0 = performance.now();
      await runTool('aws', awsArgs, awsEnv());
      aws.push({ fullS: full.wallS, resyncS: seconds(t0), clientCpuS: full.childCpuS, serverCpuS: full.serverCpuS });
      describe('awscli', r, aws[aws.length - 1], 'unchanged re-sync');
    };
    const runRclone = async (r: number): Promise<void> => {
      const rcloneArgs = ['sync', data.dir, `bench:${bucket}/rclone-${r}`];
      const full = await measureCpu(() => runTool('rclone', rcloneArgs, rcloneEnv(endpoint, rcloneConfig)), server);
      await expectStored(client, bucket, `rclone-${r}/`, data, 1, 'rclone sync');
      const t0 = performance.now();
      await runTool('rclone', rcloneArgs, rcloneEnv(endpoint, rcloneConfig));
      rclone.push({ fullS: full.wallS, resyncS: seconds(t0), clientCpuS: full.childCpuS, serverCpuS: full.serverCpuS });
      describe('rclone', r, rclone[rclone.length - 1], 'unchanged re-sync');
    };
    // Each round runs the three in another order (no tool always follows the same one), and
    // nothing is deleted until every measurement is done: on ext4 a file created soon after many
    // were deleted costs far more (its inode allocator skips, reading each from disk, the inodes
    // freed in the last ~30 s: recently_deleted() in ext4_create), so deleting one tool's
    // gigabyte (6,000 files on s3rver) made the next tool's upload up to twice as slow.
    const tools = [runAgent, runAws, runRclone];
    for (let r = 0; r < opts.rounds; r++) {
      for (let k = 0; k < tools.length; k++) {
        checkInterrupted();
        await tools[(r + k) % tools.length](r);
      }
    }

    const mbps = (runs: ToolRun[]) => data.bytes / 1e6 / median(runs.map((x) => x.fullS));
    const cpuPerGb = (runs: ToolRun[], k: 'clientCpuS' | 'serverCpuS') => {
      const xs = runs.map((x) => x[k]).filter((x): x is number => x !== undefined);
      return xs.length ? round(median(xs) / (data.bytes / 1e9), 2) : null;
    };
    const agentMbS = mbps(ours);
    const awsMbS = mbps(aws);
    const rcloneMbS = mbps(rclone);
    const ratioVsAws = agentMbS / awsMbS;
    const ratioVsRclone = agentMbS / rcloneMbS;
    const resyncFraction = median(ours.map((x) => x.resyncS / x.fullS));
    const met = { ratio_vs_awscli: ratioVsAws >= TARGET_RATIO_VS_AWSCLI, resync_fraction: resyncFraction <= TARGET_RESYNC_FRACTION };
    const result = {
      agent_mb_s: round(agentMbS, 1),
      awscli_mb_s: round(awsMbS, 1),
      rclone_mb_s: round(rcloneMbS, 1),
      ratio_vs_awscli: round(ratioVsAws, 3),
      ratio_vs_rclone: round(ratioVsRclone, 3),
      resync_fraction: round(resyncFraction, 4),
      agent_full_s: round(median(ours.map((x) => x.fullS)), 3),
      agent_resync_s: round(median(ours.map((x) => x.resyncS)), 3),
      awscli_full_s: round(median(aws.map((x) => x.fullS)), 3),
      awscli_resync_s: round(median(aws.map((x) => x.resyncS)), 3),
      rclone_full_s: round(median(rclone.map((x) => x.fullS)), 3),
      rclone_resync_s: round(median(rclone.map((x) => x.resyncS)), 3),
      // CPU seconds per GB uploaded (medians): the client's, and s3rver's while serving it.
      agent_cpu_s_per_gb: cpuPerGb(ours, 'clientCpuS'),
      awscli_cpu_s_per_gb: cpuPerGb(aws, 'clientCpuS'),
      rclone_cpu_s_per_gb: cpuPerGb(rclone, 'clientCpuS'),
      s3rver_cpu_s_per_gb: { agent: cpuPerGb(ours, 'serverCpuS'), awscli: cpuPerGb(aws, 'serverCpuS'), rclone: cpuPerGb(rclone, 'serverCpuS') },
      resync_hash_cache: hashStats[hashStats.length - 1],
      bytes: data.bytes,
      files: data.files,
      rounds: opts.rounds,
      file_concurrency: opts.fileConcurrency,
      multipart_threshold_mib: threshold / MiB,
      part_size_mib: PART_SIZE / MiB,
      parts_in_flight_per_file: QUEUE_SIZE,
      cpus: os.availableParallelism(),
      /** 1-minute load average before and after: other work on the machine moves the wall times. */
      load_avg_1m: [round(loadBefore, 2), round(os.loadavg()[0], 2)],
      /** Peak RSS of this process (the bench plus our uploader), MiB. */
      max_rss_mib: Math.round(process.resourceUsage().maxRSS / 1024),
      targets: { ratio_vs_awscli: TARGET_RATIO_VS_AWSCLI, resync_fraction: TARGET_RESYNC_FRACTION },
      met,
    };
    if (opts.json) {
      process.stdout.write(JSON.stringify(result) + '\n');
      return 0;
    }
    const num = (n: number | null, w: number) => (n === null ? '-' : n.toFixed(1)).padStart(w);
    const row = (name: string, runs: ToolRun[], mb: number) =>
      `  ${name.padEnd(24)} ${median(runs.map((x) => x.fullS)).toFixed(2).padStart(8)} ${mb.toFixed(1).padStart(8)} ${median(runs.map((x) => x.resyncS)).toFixed(3).padStart(10)}` +
      `${num(cpuPerGb(runs, 'clientCpuS'), 12)} ${num(cpuPerGb(runs, 'serverCpuS'), 12)}`;
    const lines = [
      `Checkpoint upload to s3rver: ${(data.bytes / MiB).toFixed(0)} MiB in ${data.files} files (${opts.largeFiles} large, ${opts.smallFiles} x ${opts.smallKiB} KiB), ${opts.rounds} round(s), medians`,
      `  machine: ${os.availableParallelism()} CPUs, load average ${result.load_avg_1m.join(' -> ')}, node ${process.version}; ours: ${opts.fileConcurrency} files in flight, one PUT up to ${threshold / MiB} MiB, above: ${PART_SIZE / MiB} MiB parts, ${QUEUE_SIZE} parts in flight per file`,
      `  ${''.padEnd(24)} ${'full s'.padStart(8)} ${'MB/s'.padStart(8)} ${'re-sync s'.padStart(10)}${'CPU s/GB'.padStart(12)} ${'s3rver s/GB'.padStart(12)}`,
      row('det CheckpointUploader', ours, agentMbS),
      row('aws s3 sync', aws, awsMbS),
      row('rclone sync', rclone, rcloneMbS),
      `  throughput vs awscli: ${ratioVsAws.toFixed(3)}x  target >= ${TARGET_RATIO_VS_AWSCLI}: ${met.ratio_vs_awscli ? 'MET' : 'NOT MET'}`,
      `  throughput vs rclone: ${ratioVsRclone.toFixed(3)}x`,
      `  unchanged re-upload / full upload: ${resyncFraction.toFixed(4)}  target <= ${TARGET_RESYNC_FRACTION}: ${met.resync_fraction ? 'MET' : 'NOT MET'}` +
        ` (hash cache: ${result.resync_hash_cache.hits} hits, ${result.resync_hash_cache.misses} misses)`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
    return 0;
  } finally {
    note('cleaning up');
    for (const p of ['agent-', 'awscli-', 'rclone-']) await deletePrefix(client, bucket, p).catch(() => undefined);
    await client.send(new DeleteBucketCommand({ Bucket: bucket })).catch(() => undefined);
    client.destroy();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench/s3-sync: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
