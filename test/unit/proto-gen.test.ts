import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../../..');
const GEN_DIR = path.join(ROOT, 'common', 'proto-gen');
const PROTO_DIR = path.join(ROOT, 'proto');

/** Relative paths of all files under dir, sorted. */
function tree(dir: string, rel = ''): string[] {
  return fs
    .readdirSync(path.join(dir, rel), { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? tree(dir, path.join(rel, e.name)) : [path.join(rel, e.name)]))
    .sort();
}

describe('generated protobuf types', () => {
  let tmp: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'det-proto-gen-'));
  });
  after(() => {
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('common/proto-gen/ matches a fresh regeneration byte for byte', function () {
    this.timeout(60_000);
    const out = path.join(tmp, 'gen');
    execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'gen-proto.js'), out], { cwd: ROOT, stdio: 'pipe' });
    const want = tree(out);
    const have = tree(GEN_DIR);
    assert.ok(want.length > 0, 'the generator wrote files');
    assert.deepEqual(have, want, 'same file list (run `npm run gen:proto`)');
    const differ = want.filter((f) => !fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(GEN_DIR, f))));
    assert.deepEqual(differ, [], 'files differ from regeneration (run `npm run gen:proto`; never edit common/proto-gen by hand)');
  });

  it('every generated file is marked DO NOT EDIT', () => {
    for (const f of tree(GEN_DIR)) assert.match(fs.readFileSync(path.join(GEN_DIR, f), 'utf8'), /^\/\/ GENERATED .* DO NOT EDIT\./, f);
  });
});

const DECLARATION = /^\s*(message|enum|service|rpc)\s/;
const FIELD = /^\s*(repeated |optional )?[\w.<>, ]+\s+\w+\s*=\s*\d+;/;
const ENUM_VALUE = /^\s*[A-Z_0-9]+\s*=\s*\d+;/;

/** "file:line: text" for each declaration, field or enum value without a // comment directly above it. */
function undocumented(file: string, text: string): string[] {
  const lines = text.split('\n');
  const out: string[] = [];
  lines.forEach((line, i) => {
    if (!(DECLARATION.test(line) || FIELD.test(line) || ENUM_VALUE.test(line))) return;
    if (i === 0 || !/^\s*\/\//.test(lines[i - 1])) out.push(`${file}:${i + 1}: ${line.trim()}`);
  });
  return out;
}

describe('.proto documentation', () => {
  it('the checker flags what it should', () => {
    const text = ['// Doc.', 'message A {', '  string x = 1;', '  // Doc.', '  map<string, string> y = 2;', '}', 'enum E {', '  E_A = 0;', '}', 'service S {', '  rpc Go(A) returns (A);', '}'].join('\n');
    assert.deepEqual(undocumented('t.proto', text), ['t.proto:3: string x = 1;', 't.proto:7: enum E {', 't.proto:8: E_A = 0;', 't.proto:10: service S {', 't.proto:11: rpc Go(A) returns (A);']);
  });

  const files = tree(PROTO_DIR).filter((f) => f.endsWith('.proto'));
  it('finds the .proto files', () => {
    assert.ok(files.length >= 2, files.join(', '));
  });
  for (const f of files) {
    it(`${f}: every service, rpc, message, enum, field and enum value has a // comment above it`, () => {
      const text = fs.readFileSync(path.join(PROTO_DIR, f), 'utf8');
      const checked = text.split('\n').filter((l) => DECLARATION.test(l) || FIELD.test(l) || ENUM_VALUE.test(l)).length;
      assert.ok(checked > 10, `parsed only ${checked} declarations`);
      assert.deepEqual(undocumented(f, text), []);
    });
  }
});
