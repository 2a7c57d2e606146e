import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { status as GrpcStatus } from '@grpc/grpc-js';
import { DetError, ERRORS, isErrorCode, type ErrorCode } from '../../common/errors';

const ROOT = path.resolve(__dirname, '../../..');
const DOC = path.join(ROOT, 'docs', 'errors.md');

interface DocRow {
  code: string;
  grpc: string;
  retryable: string;
  meaning: string;
  todo: string;
}

/** The rows of the markdown table in docs/errors.md whose first cell is a `DET_ERR_*` code. */
function docRows(): DocRow[] {
  return fs
    .readFileSync(DOC, 'utf8')
    .split('\n')
    .filter((l) => /^\|\s*`DET_ERR_/.test(l))
    .map((l) => {
      const cells = l.split('|').slice(1, -1).map((c) => c.trim().replace(/^`|`$/g, ''));
      assert.equal(cells.length, 5, `row needs 5 cells: ${l}`);
      const [code, grpc, retryable, meaning, todo] = cells;
      return { code, grpc, retryable, meaning, todo };
    });
}

const codes = Object.keys(ERRORS) as ErrorCode[];

describe('error registry', () => {
  it('has codes', () => {
    assert.ok(codes.length > 0);
  });

  it('every code matches DET_ERR_[A-Z_]+', () => {
    for (const code of codes) assert.match(code, /^DET_ERR_[A-Z_]+$/);
  });

  it('every code has a known gRPC status, a retryable flag and a description', () => {
    const known = new Set(Object.values(GrpcStatus).filter((v) => typeof v === 'number'));
    for (const code of codes) {
      const def = ERRORS[code];
      assert.ok(known.has(def.grpc), `${code}: gRPC status ${def.grpc}`);
      assert.equal(typeof def.retryable, 'boolean', code);
      assert.ok(def.description.length > 10, `${code}: description`);
    }
  });

  it('DetError exposes retryable and gRPC status from the registry', () => {
    for (const code of codes) {
      const err = new DetError(code, 'x');
      assert.equal(err.retryable, ERRORS[code].retryable);
      assert.equal(err.grpcStatus, ERRORS[code].grpc);
      assert.ok(isErrorCode(code));
    }
    assert.ok(!isErrorCode('DET_ERR_NOPE'));
    assert.ok(!isErrorCode('toString'));
  });

  describe('docs/errors.md', () => {
    it('documents every registered code exactly once', () => {
      const documented = docRows().map((r) => r.code);
      const missing = codes.filter((c) => !documented.includes(c));
      assert.deepEqual(missing, [], `undocumented codes: ${missing.join(', ')}`);
      const dupes = documented.filter((c, i) => documented.indexOf(c) !== i);
      assert.deepEqual(dupes, [], 'documented twice');
    });

    it('lists no unknown codes anywhere in the document', () => {
      const mentioned = new Set(fs.readFileSync(DOC, 'utf8').match(/DET_ERR_[A-Z_]+/g) ?? []);
      const unknown = [...mentioned].filter((c) => !isErrorCode(c));
      assert.deepEqual(unknown, []);
    });

    it('states the gRPC status and retryability the registry has, and what to do', () => {
      for (const row of docRows()) {
        assert.ok(isErrorCode(row.code), row.code);
        const def = ERRORS[row.code];
        assert.equal(row.grpc, GrpcStatus[def.grpc], `${row.code}: gRPC status`);
        assert.equal(row.retryable, def.retryable ? 'yes' : 'no', `${row.code}: retryable`);
        assert.ok(row.meaning.length > 10, `${row.code}: meaning`);
        assert.ok(row.todo.length > 10, `${row.code}: what to do`);
      }
    });
  });
});
