// Helpers for tests against the s3rver of the test environment: a plain S3 client (the
// "standard client" that plants objects behind the adapter's back) and a fresh bucket per test.
import { randomBytes } from 'node:crypto';
import {
  CreateBucketCommand,
  DeleteBucketCommand,
  DeleteObjectsCommand,
  ListObjectsV2Command,
  S3Client,
} from '@aws-sdk/client-s3';
import { testEnv } from './env';

/** s3rver's fixed credentials (it accepts only these). */
export const S3RVER_CREDENTIALS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;
/** Region the tests sign for (s3rver ignores it). */
export const S3_TEST_REGION = 'us-east-1';

/** A standard S3Client for the test server (path-style, s3rver's credentials). */
export function testS3Client(): S3Client {
  return new S3Client({
    endpoint: testEnv().s3Endpoint,
    region: S3_TEST_REGION,
    forcePathStyle: true,
    credentials: S3RVER_CREDENTIALS,
  });
}

/** Creates a bucket with a unique name ("det-test-<hint>-<random>") and returns its name. */
export async function createTestBucket(client: S3Client, hint = 'b'): Promise<string> {
  const safeHint = hint.toLowerCase().replace(/[^a-z0-9-]/g, '-').slice(0, 20);
  const bucket = `det-test-${safeHint}-${randomBytes(5).toString('hex')}`;
  await client.send(new CreateBucketCommand({ Bucket: bucket }));
  return bucket;
}

/** Empties and deletes a bucket; missing buckets are fine. */
export async function deleteTestBucket(client: S3Client, bucket: string): Promise<void> {
  try {
    let token: string | undefined;
    do {
      const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
      const keys = (page.Contents ?? []).map((o) => ({ Key: o.Key! }));
      if (keys.length > 0) await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    await client.send(new DeleteBucketCommand({ Bucket: bucket }));
  } catch (err) {
    if ((err as { name?: string }).name !== 'NoSuchBucket') throw err;
  }
}
