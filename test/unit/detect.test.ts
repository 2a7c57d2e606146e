// GPU/slot detection against nvidia-smi outputs recorded on a real H200 host (testdata/nvidia-smi-h200)
// and hand-made ones (testdata/handmade).
import { strict as assert } from 'node:assert';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { DetError } from '../../common/errors';
import { cpuDevices, detectDevices } from '../../agent/detect/devices';
import {
  NVIDIA_SMI_ARGS,
  detectGpus,
  execFilePort,
  parseNvidiaSmiCsv,
  type ExecPort,
  type ExecResult,
} from '../../agent/detect/nvidia-smi';

const TESTDATA = path.resolve(__dirname, '../../../agent/detect/testdata');
const H200_UUID = 'GPU-683f45df-28e7-86c0-004d-046e140e4ce4';

function fixture(rel: string): string {
  return readFileSync(path.join(TESTDATA, rel), 'utf8');
}

/** A recorded call's output: the capture appends a final "rc=N" line with the exit code. */
function recorded(rel: string): { stdout: string; exitCode: number } {
  const text = fixture(rel);
  const m = /\n?rc=(\d+)\n?$/.exec(text);
  if (!m) return { stdout: text, exitCode: 0 };
  return { stdout: text.slice(0, m.index) + '\n', exitCode: Number(m[1]) };
}

/** An exec port that answers every call with `result` and records the calls. */
function fakeExec(result: ExecResult | (() => Promise<ExecResult>)) {
  const calls: { file: string; args: readonly string[]; timeoutMs: number }[] = [];
  const exec: ExecPort = async (file, args, { timeoutMs }) => {
    calls.push({ file, args, timeoutMs });
    return typeof result === 'function' ? result() : result;
  };
  return { exec, calls };
}

const exited = (stdout: string, exitCode = 0, stderr = ''): ExecResult => ({ kind: 'exited', exitCode, stdout, stderr });

describe('parseNvidiaSmiCsv', () => {
  it('parses the recorded H200 query into one CUDA device with uuid and memory', () => {
    assert.deepEqual(parseNvidiaSmiCsv(fixture('nvidia-smi-h200/query.csv')), [
      { id: 0, brand: 'NVIDIA H200', uuid: H200_UUID, type: 'cuda', memoryMib: 143771 },
    ]);
  });

  it('parses the recorded nounits form identically', () => {
    assert.deepEqual(
      parseNvidiaSmiCsv(fixture('nvidia-smi-h200/query-nounits.csv')),
      parseNvidiaSmiCsv(fixture('nvidia-smi-h200/query.csv')),
    );
  });

  it('still sees the GPU with CUDA_VISIBLE_DEVICES="" (nvidia-smi ignores it)', () => {
    const { stdout, exitCode } = recorded('nvidia-smi-h200/cvd-empty.txt');
    assert.equal(exitCode, 0);
    assert.equal(parseNvidiaSmiCsv(stdout).length, 1);
  });

  it('parses 8 GPUs in index order', () => {
    const devices = parseNvidiaSmiCsv(fixture('handmade/a100x8.csv'));
    assert.equal(devices.length, 8);
    assert.deepEqual(devices.map((d) => d.id), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.equal(new Set(devices.map((d) => d.uuid)).size, 8);
    for (const d of devices) {
      assert.equal(d.brand, 'NVIDIA A100-SXM4-80GB');
      assert.equal(d.memoryMib, 81920);
      assert.equal(d.type, 'cuda');
      assert.match(d.uuid, /^GPU-[0-9a-f-]{36}$/);
    }
  });

  it('tolerates CRLF, blank lines and nounits', () => {
    assert.deepEqual(
      parseNvidiaSmiCsv(fixture('handmade/a100x8-nounits-crlf.csv')),
      parseNvidiaSmiCsv(fixture('handmade/a100x8.csv')),
    );
  });

  it('returns no devices for empty output', () => {
    assert.deepEqual(parseNvidiaSmiCsv(fixture('handmade/empty.csv')), []);
    assert.deepEqual(parseNvidiaSmiCsv('\n\r\n  \n'), []);
  });

  it('rejects a malformed line, naming its number and text', () => {
    assert.throws(
      () => parseNvidiaSmiCsv(fixture('handmade/malformed.csv')),
      (err: Error) => {
        assert.match(err.message, /line 2/);
        assert.match(err.message, /1, NVIDIA A100-SXM4-80GB, 81920 MiB/);
        return true;
      },
    );
  });

  it('rejects outputs of other nvidia-smi modes and a CSV header', () => {
    for (const rel of ['nvidia-smi-h200/list.txt', 'nvidia-smi-h200/full.txt', 'nvidia-smi-h200/version.txt']) {
      assert.throws(() => parseNvidiaSmiCsv(fixture(rel)), /cannot parse nvidia-smi output line 1/, rel);
    }
    assert.throws(() => parseNvidiaSmiCsv('index, name, uuid, memory.total [MiB]\n'), /index "index"/);
  });

  it('rejects bad fields: memory, uuid, duplicate index', () => {
    assert.throws(() => parseNvidiaSmiCsv(`0, NVIDIA H200, ${H200_UUID}, lots`), /memory.total "lots"/);
    assert.throws(() => parseNvidiaSmiCsv('0, NVIDIA H200, 683f45df, 143771 MiB'), /uuid "683f45df"/);
    assert.throws(
      () => parseNvidiaSmiCsv(`0, A, ${H200_UUID}, 1 MiB\n0, B, GPU-1234, 1 MiB`),
      /line 2 .*index 0 appears twice/,
    );
  });

  it('accepts an unknown memory size as 0', () => {
    assert.equal(parseNvidiaSmiCsv(`0, NVIDIA GH200, ${H200_UUID}, [N/A]`)[0].memoryMib, 0);
  });
});

describe('detectGpus', () => {
  it('runs nvidia-smi with the query arguments and a timeout', async () => {
    const { exec, calls } = fakeExec(exited(fixture('nvidia-smi-h200/query.csv')));
    const result = await detectGpus(exec);
    assert.deepEqual(result, { devices: parseNvidiaSmiCsv(fixture('nvidia-smi-h200/query.csv')) });
    assert.equal(calls.length, 1);
    assert.equal(calls[0].file, 'nvidia-smi');
    assert.deepEqual(calls[0].args, [...NVIDIA_SMI_ARGS]);
    assert.ok(calls[0].timeoutMs > 0);
  });

  it('not installed (ENOENT): no devices and no warning', async () => {
    const { exec } = fakeExec({ kind: 'not-found', message: 'nvidia-smi: not found on PATH' });
    const result = await detectGpus(exec);
    assert.deepEqual(result.devices, []);
    assert.equal(result.warning, undefined);
    assert.match(result.absentReason ?? '', /not installed/);
  });

  it('the real exec port maps a missing binary to not-found', async () => {
    const result = await detectGpus(execFilePort, { command: '/nonexistent/bin/nvidia-smi' });
    assert.deepEqual(result.devices, []);
    assert.equal(result.warning, undefined);
  });

  it('a failing call (recorded rc=2, bad field) gives no devices and a warning with its output', async () => {
    const { stdout, exitCode } = recorded('nvidia-smi-h200/bad-field.txt');
    assert.equal(exitCode, 2);
    const { exec } = fakeExec(exited(stdout, exitCode));
    const result = await detectGpus(exec);
    assert.deepEqual(result.devices, []);
    assert.match(result.warning ?? '', /exited with code 2/);
    assert.match(result.warning ?? '', /Field "bogus" is not a valid field to query/);
  });

  it('no GPU (exit 6, "No devices were found") gives a warning', async () => {
    const { exec } = fakeExec(exited(fixture('handmade/no-devices.txt'), 6));
    const result = await detectGpus(exec);
    assert.deepEqual(result.devices, []);
    assert.match(result.warning ?? '', /code 6: No devices were found/);
  });

  it('a successful run that lists nothing gives no devices and no warning', async () => {
    const { exec } = fakeExec(exited(fixture('handmade/empty.csv')));
    assert.deepEqual(await detectGpus(exec), { devices: [], absentReason: 'nvidia-smi listed no GPUs' });
  });

  it('unparsable output gives a warning instead of throwing', async () => {
    const { exec } = fakeExec(exited(fixture('nvidia-smi-h200/full.txt')));
    const result = await detectGpus(exec);
    assert.deepEqual(result.devices, []);
    assert.match(result.warning ?? '', /cannot parse nvidia-smi output line 1/);
  });

  it('a timeout gives a warning', async () => {
    const { exec } = fakeExec({ kind: 'timed-out', timeoutMs: 10_000, stdout: '', stderr: '' });
    const result = await detectGpus(exec);
    assert.deepEqual(result.devices, []);
    assert.match(result.warning ?? '', /did not finish within 10000 ms/);
  });

  it('a port that rejects still does not throw', async () => {
    const { exec } = fakeExec(() => Promise.reject(new Error('boom')));
    const result = await detectGpus(exec);
    assert.deepEqual(result.devices, []);
    assert.match(result.warning ?? '', /boom/);
  });

  describe('with the real exec port and stand-in scripts', () => {
    let dir = '';
    before(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'det-detect-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    function script(name: string, body: string): string {
      const file = path.join(dir, name);
      writeFileSync(file, `#!/bin/sh\n${body}\n`);
      chmodSync(file, 0o755);
      return file;
    }

    it('prints the recorded H200 query', async () => {
      const cmd = script('ok.sh', `cat '${path.join(TESTDATA, 'nvidia-smi-h200/query.csv')}'`);
      const result = await detectGpus(execFilePort, { command: cmd });
      assert.equal(result.warning, undefined);
      assert.equal(result.devices[0].uuid, H200_UUID);
    });

    it('exits 2 with the recorded bad-field text', async () => {
      const cmd = script('bad.sh', `echo 'Field "bogus" is not a valid field to query.'; exit 2`);
      const result = await detectGpus(execFilePort, { command: cmd });
      assert.deepEqual(result.devices, []);
      assert.match(result.warning ?? '', /exited with code 2: Field "bogus"/);
    });

    it('hangs and is killed after the timeout', async () => {
      const cmd = script('hang.sh', 'exec sleep 30');
      const started = Date.now();
      const result = await detectGpus(execFilePort, { command: cmd, timeoutMs: 200 });
      assert.deepEqual(result.devices, []);
      assert.match(result.warning ?? '', /did not finish within 200 ms/);
      assert.ok(Date.now() - started < 10_000, 'the timeout bounds the call');
    });
  });
});

describe('detectDevices', () => {
  const h200 = () => fakeExec(exited(fixture('nvidia-smi-h200/query.csv')));
  const notFound = () => fakeExec({ kind: 'not-found', message: 'not found' });

  it('auto: GPUs when present', async () => {
    const result = await detectDevices({ slotType: 'auto', cpuSlots: 4 }, h200().exec);
    assert.deepEqual(result.devices.map((d) => [d.type, d.uuid]), [['cuda', H200_UUID]]);
    assert.equal(result.warning, undefined);
  });

  it('auto: CPU slots when nvidia-smi is absent', async () => {
    const result = await detectDevices({ slotType: 'auto', cpuSlots: 3 }, notFound().exec);
    assert.deepEqual(result, { devices: cpuDevices(3) });
    assert.deepEqual(
      result.devices.map((d) => [d.id, d.brand, d.type]),
      [
        [0, 'cpu', 'cpu'],
        [1, 'cpu', 'cpu'],
        [2, 'cpu', 'cpu'],
      ],
    );
  });

  it('auto: CPU slots plus the warning when nvidia-smi fails', async () => {
    const { stdout, exitCode } = recorded('nvidia-smi-h200/bad-field.txt');
    const result = await detectDevices({ slotType: 'auto', cpuSlots: 2 }, fakeExec(exited(stdout, exitCode)).exec);
    assert.equal(result.devices.length, 2);
    assert.match(result.warning ?? '', /exited with code 2/);
  });

  it('gpu: the GPUs', async () => {
    const result = await detectDevices({ slotType: 'gpu', cpuSlots: 1 }, fakeExec(exited(fixture('handmade/a100x8.csv'))).exec);
    assert.equal(result.devices.length, 8);
  });

  it('gpu without GPUs is a config error that says why', async () => {
    await assert.rejects(detectDevices({ slotType: 'gpu', cpuSlots: 1 }, notFound().exec), (err: unknown) => {
      assert.ok(err instanceof DetError);
      assert.equal(err.code, 'DET_ERR_CONFIG_INVALID');
      assert.match(err.message, /^slot_type is gpu but nvidia-smi found no GPUs: nvidia-smi is not installed/);
      return true;
    });
    const { stdout, exitCode } = recorded('nvidia-smi-h200/bad-field.txt');
    await assert.rejects(
      detectDevices({ slotType: 'gpu', cpuSlots: 1 }, fakeExec(exited(stdout, exitCode)).exec),
      /found no GPUs: nvidia-smi exited with code 2/,
    );
  });

  it('cpu: CPU slots without running nvidia-smi', async () => {
    const { exec, calls } = h200();
    const result = await detectDevices({ slotType: 'cpu', cpuSlots: 2 }, exec);
    assert.deepEqual(result.devices, cpuDevices(2));
    assert.equal(calls.length, 0);
  });

  it('rejects a bad cpuSlots', async () => {
    await assert.rejects(detectDevices({ slotType: 'cpu', cpuSlots: -1 }, notFound().exec), /cpu_slots/);
    await assert.rejects(detectDevices({ slotType: 'cpu', cpuSlots: 1.5 }, notFound().exec), /cpu_slots/);
  });
});
