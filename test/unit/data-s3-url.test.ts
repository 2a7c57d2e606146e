import { strict as assert } from 'node:assert';
import { DetError } from '../../common/errors';
import { formatS3Url, parseS3Url, s3UrlProblem } from '../../common/storage/s3-url';

describe('parseS3Url (data input sources)', () => {
  const good: [string, string, string][] = [
    ['s3://datasets/mnist/', 'datasets', 'mnist'],
    ['s3://datasets/mnist', 'datasets', 'mnist'],
    ['s3://datasets/images/train/2024/', 'datasets', 'images/train/2024'],
    ['s3://my.bucket-1/a b/c+d=e/', 'my.bucket-1', 'a b/c+d=e'],
    ['s3://abc', 'abc', ''],
    ['s3://abc/', 'abc', ''],
    ['s3://abc/..x/y..z/', 'abc', '..x/y..z'],
  ];
  for (const [url, bucket, prefix] of good) {
    it(`parses ${url}`, () => {
      assert.deepEqual(parseS3Url(url), { bucket, prefix });
      assert.equal(s3UrlProblem(url), undefined);
    });
  }

  const bad: [string, RegExp][] = [
    ['', /must start with s3:\/\//],
    ['datasets/mnist', /must start with s3:\/\//],
    ['S3://datasets/mnist/', /must start with s3:\/\//],
    ['https://datasets.s3.amazonaws.com/mnist/', /must start with s3:\/\//],
    ['s3://', /bucket "" is not a valid/],
    ['s3:///mnist/', /bucket "" is not a valid/],
    ['s3://ab/', /bucket "ab" is not a valid/],
    ['s3://Datasets/mnist/', /bucket "Datasets" is not a valid/],
    ['s3://data_sets/x', /bucket "data_sets" is not a valid/],
    ['s3://-datasets/x', /not a valid S3 bucket name/],
    ['s3://datasets//', /empty segments/],
    ['s3://datasets//mnist/', /empty segments/],
    ['s3://datasets/a//b/', /empty segments/],
    ['s3://datasets/mnist//', /empty segments/],
    ['s3://datasets/../etc/', /'\.\.' segments/],
    ['s3://datasets/a/../b', /'\.\.' segments/],
    ['s3://datasets/a/..', /'\.\.' segments/],
    ['s3://datasets/./a', /'\.' segments/],
    ['s3://datasets/a\\b/', /backslashes/],
    ['s3://datasets/a\0b/', /control characters/],
    ['s3://datasets/a\nb/', /control characters/],
    [`s3://datasets/${'x'.repeat(1025)}/`, /at most 1024 bytes/],
  ];
  for (const [url, why] of bad) {
    it(`refuses ${JSON.stringify(url).slice(0, 60)}, naming the URL`, () => {
      assert.throws(
        () => parseS3Url(url),
        (err: unknown) => {
          assert.ok(err instanceof DetError, String(err));
          assert.equal(err.code, 'DET_ERR_INVALID_ARGUMENT');
          assert.ok(err.message.includes(`invalid S3 URL ${JSON.stringify(url)}`), err.message);
          assert.match(err.message, why);
          return true;
        },
      );
      assert.match(s3UrlProblem(url) ?? '', why);
    });
  }

  it('refuses non-strings', () => {
    assert.throws(() => parseS3Url(undefined as unknown as string), /invalid S3 URL "undefined"/);
  });

  it('formats the canonical URL back', () => {
    assert.equal(formatS3Url(parseS3Url('s3://datasets/mnist')), 's3://datasets/mnist/');
    assert.equal(formatS3Url(parseS3Url('s3://datasets')), 's3://datasets/');
    assert.equal(formatS3Url({ bucket: 'b12', prefix: 'a/b' }), 's3://b12/a/b/');
  });
});
