// packer/ checked with the real tools, offline: `packer validate` (Debian's packer 1.6.6 validates
// HCL2 without AWS; it rejects the `required_plugins` block, so it validates a copy of packer/
// without plugins.pkr.hcl) and `packer fmt -check`, shellcheck on every provisioning script, and
// `systemd-analyze verify` on the det-agent unit (plus the unit settings the AMI relies on).
import { strict as assert } from 'node:assert';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { EXIT_CONFIG_SOURCE_FAILED } from '../../agent/main';
import { PACKER_DIR, packerCopy, packerEnv } from '../support/packer';

const SCRIPTS_DIR = path.join(PACKER_DIR, 'scripts');
const UNIT = path.join(PACKER_DIR, 'files', 'det-agent.service');

/** Runs a tool; a missing tool is a failure naming the package (test/env/setup.sh installs them). */
function run(cmd: string, args: string[], opts: { cwd?: string } = {}): SpawnSyncReturns<string> {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, encoding: 'utf8', timeout: 60_000, env: packerEnv() });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message} (test/env/setup.sh installs packer, shellcheck and systemd)`);
  return r;
}

/** packer validate, without network when we may make a network namespace (root): it must not need AWS. */
function packerValidate(dir: string, vars: string[] = []): SpawnSyncReturns<string> {
  const args = ['validate', ...vars.flatMap((v) => ['-var', v]), '.'];
  const offline = spawnSync('unshare', ['--net', 'true']).status === 0;
  return offline ? run('unshare', ['--net', 'packer', ...args], { cwd: dir }) : run('packer', args, { cwd: dir });
}

/** Directive values of a unit file, by "Section.Key", in order. */
function unitDirectives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      section = s[1];
      continue;
    }
    const eq = line.indexOf('=');
    const key = `${section}.${line.slice(0, eq)}`;
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}

describe('packer/ (AMI template, provisioning scripts, det-agent unit)', function () {
  this.timeout(60_000);
  const scripts = fs.readdirSync(SCRIPTS_DIR).filter((f) => f.endsWith('.sh')).sort();
  const template = fs.readFileSync(path.join(PACKER_DIR, 'agent.pkr.hcl'), 'utf8');

  it('packer validate passes offline with the defaults and with gpu, images and tags set', () => {
    const dir = packerCopy({ placeholderBundle: true });
    for (const vars of [[], ['gpu=true', 'images=["127.0.0.1:5000/det-test/busybox:latest"]', 'tags={team="ml"}', 'region=eu-west-1', 'volume_size=200']]) {
      const r = packerValidate(dir, vars);
      assert.equal(r.status, 0, `packer validate ${vars.join(' ')}:\n${r.stdout}${r.stderr}`);
    }
    // It really validates: a wrongly typed variable is rejected.
    const bad = packerValidate(dir, ['volume_size=lots']);
    assert.notEqual(bad.status, 0, 'packer validate accepted volume_size=lots');
  });

  it('declares both sources sharing one build, the plugins in their own file, and uses every script', () => {
    assert.match(template, /source "amazon-ebs" "agent"/);
    assert.match(template, /source "docker" "agent"/);
    assert.match(template, /sources = \["source\.amazon-ebs\.agent", "source\.docker\.agent"\]/);
    assert.doesNotMatch(template, /required_plugins/, 'required_plugins belongs in plugins.pkr.hcl');
    const plugins = fs.readFileSync(path.join(PACKER_DIR, 'plugins.pkr.hcl'), 'utf8');
    assert.match(plugins, /required_plugins\s*{[^]*github\.com\/hashicorp\/amazon[^]*github\.com\/hashicorp\/docker/);
    for (const v of ['region', 'instance_type', 'base_ami_name', 'gpu', 'agent_bundle', 'images', 'volume_size', 'tags']) {
      assert.match(template, new RegExp(`variable "${v}" {`), `variable ${v}`);
    }
    for (const s of scripts) assert.ok(template.includes(`scripts/${s}"`), `agent.pkr.hcl runs scripts/${s}`);
  });

  it('packer fmt -check finds nothing to change', () => {
    const r = run('packer', ['fmt', '-check', '-diff', '.'], { cwd: PACKER_DIR });
    assert.equal(r.status, 0, `packer fmt would change:\n${r.stdout}${r.stderr}`);
  });

  it('every provisioning script is shellcheck clean, strict and names no package host', () => {
    assert.ok(scripts.length >= 5, `scripts: ${scripts.join(', ')}`);
    const r = run('shellcheck', ['-x', ...scripts], { cwd: SCRIPTS_DIR });
    assert.equal(r.status, 0, `shellcheck:\n${r.stdout}${r.stderr}`);
    for (const s of scripts) {
      const text = fs.readFileSync(path.join(SCRIPTS_DIR, s), 'utf8');
      assert.match(text, /^#!\/usr\/bin\/env bash\n/, `${s}: bash shebang`);
      assert.match(text, /^set -euo pipefail$/m, `${s}: set -euo pipefail`);
      // Mirrors come from the machine's apt sources (or packer variables), never from the scripts.
      assert.doesNotMatch(text, /[a-z]+:\/\/[a-z0-9.-]+\.[a-z]{2,}/i, `${s} hard-codes a host`);
    }
  });

  it('the det-agent unit passes systemd-analyze verify and has the settings the AMI relies on', () => {
    // An alternate root: the unit where the AMI installs it, an executable at its ExecStart, and
    // this machine's system units (docker.service, network-online.target, ...).
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'det-unit-root-'));
    fs.mkdirSync(path.join(root, 'etc', 'systemd', 'system'), { recursive: true });
    fs.mkdirSync(path.join(root, 'opt', 'determined', 'bin'), { recursive: true });
    fs.mkdirSync(path.join(root, 'usr', 'lib', 'systemd'), { recursive: true });
    fs.copyFileSync(UNIT, path.join(root, 'etc', 'systemd', 'system', 'det-agent.service'));
    fs.writeFileSync(path.join(root, 'opt', 'determined', 'bin', 'det-agent'), '#!/bin/sh\n', { mode: 0o755 });
    fs.cpSync('/usr/lib/systemd/system', path.join(root, 'usr', 'lib', 'systemd', 'system'), { recursive: true, verbatimSymlinks: true });
    const r = run('systemd-analyze', ['verify', `--root=${root}`, '/etc/systemd/system/det-agent.service']);
    // verify exits 0 on unknown keys too; any output is a finding.
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.equal((r.stdout + r.stderr).trim(), '', 'systemd-analyze verify output');

    const d = unitDirectives(fs.readFileSync(UNIT, 'utf8'));
    const words = (key: string) => (d.get(key) ?? []).flatMap((v) => v.split(/\s+/));
    for (const key of ['Unit.After', 'Unit.Wants']) {
      assert.ok(words(key).includes('docker.service') && words(key).includes('network-online.target'), `${key}: ${words(key).join(' ')}`);
    }
    assert.deepEqual(d.get('Service.ExecStart'), ['/opt/determined/bin/det-agent --config-source ec2']);
    assert.deepEqual(d.get('Service.Restart'), ['always']);
    assert.ok(d.has('Service.RestartSec') && d.has('Unit.StartLimitIntervalSec') && d.has('Unit.StartLimitBurst'), 'restart backoff');
    assert.deepEqual(d.get('Service.RestartPreventExitStatus'), [String(EXIT_CONFIG_SOURCE_FAILED)], 'no restart loop on bad user data');
    assert.deepEqual(d.get('Service.RuntimeDirectory'), ['det-agent']);
    assert.deepEqual(d.get('Service.EnvironmentFile'), ['-/etc/default/det-agent']);
    assert.deepEqual(d.get('Install.WantedBy'), ['multi-user.target']);
  });

  it('systemd-analyze verify reports a broken unit (the check above can fail)', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-unit-bad-'));
    const bad = path.join(dir, 'det-agent.service');
    fs.writeFileSync(bad, fs.readFileSync(UNIT, 'utf8').replace('RestartSec=', 'RestartSecs='));
    const r = run('systemd-analyze', ['verify', bad]);
    assert.match(r.stdout + r.stderr, /Unknown key 'RestartSecs'/);
  });
});
