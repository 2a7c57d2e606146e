import { strict as assert } from 'node:assert';
import { DetError } from '../../common/errors';
import { checkpointPrefix, checkpointUuidProblem, fileKey, fileKeyProblem, MANIFEST_NAME, manifestKey } from '../../common/checkpoints/layout';

const UUID = '3f2c8a1e-7d4b-4c39-9e2a-0b1d5f6a7c80';

describe('checkpoint storage layout', () => {
  it('puts files and the manifest under the uuid', () => {
    assert.equal(MANIFEST_NAME, '.det-manifest.json');
    assert.equal(manifestKey(UUID), `${UUID}/.det-manifest.json`);
    assert.equal(checkpointPrefix(UUID), `${UUID}/`);
    assert.equal(fileKey(UUID, 'model/weights.bin'), `${UUID}/model/weights.bin`);
  });

  const badUuids: [string, RegExp][] = [
    ['', /empty/],
    ['..', /not a valid uuid/],
    ['.', /not a valid uuid/],
    ['a/b', /may only contain/],
    ['../x', /may only contain/],
    ['x'.repeat(129), /longer than 128/],
  ];
  for (const [uuid, want] of badUuids) {
    it(`refuses the uuid ${JSON.stringify(uuid.length > 20 ? uuid.slice(0, 10) + '...' : uuid)}`, () => {
      assert.match(checkpointUuidProblem(uuid) ?? '', want);
      for (const fn of [manifestKey, checkpointPrefix]) {
        assert.throws(
          () => fn(uuid),
          (e: unknown) => e instanceof DetError && e.code === 'DET_ERR_INVALID_ARGUMENT' && /invalid checkpoint uuid/.test(e.message),
        );
      }
    });
  }

  it('refuses a file key whose path would escape the storage root', () => {
    assert.throws(() => fileKey(UUID, '../../x'), /'\.\.' segments are not allowed/);
  });

  const keys: [string, RegExp | undefined][] = [
    [`${UUID}/model/weights.bin`, undefined],
    ['u-0/a', undefined],
    ['u-0/sub/.det-nested', undefined],
    ['a', /<checkpoint uuid>\/<path>/],
    ['u-0/../x', /'\.\.' segments/],
    ['/u-0/x', /absolute/],
    ['u-0//x', /empty segments/],
    ['u-0\\x', /backslash/],
    ['u 0/x', /checkpoint uuid is invalid/],
    ['u-0/.det-manifest.json', /reserved/],
    ['u-0/.det-metadata.json', /reserved/],
  ];
  for (const [key, want] of keys) {
    it(`file key ${JSON.stringify(key)} is ${want ? 'refused' : 'accepted'}`, () => {
      const problem = fileKeyProblem(key);
      if (want) assert.match(problem ?? '(accepted)', want);
      else assert.equal(problem, undefined);
    });
  }
});
