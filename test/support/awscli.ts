// Debian's awscli against the test s3rver: the independent client that checks what we write is
// readable by standard tools (and the reverse).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { testEnv } from './env';
import { S3_TEST_REGION, S3RVER_CREDENTIALS } from './s3';

const execFileP = promisify(execFile);

/** Environment for any AWS SDK or CLI process talking to s3rver (no config files, no IMDS). */
export function s3TestProcessEnv(): NodeJS.ProcessEnv {
  return {
    AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
    AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
    AWS_DEFAULT_REGION: S3_TEST_REGION,
    AWS_REGION: S3_TEST_REGION,
    AWS_CONFIG_FILE: '/dev/null',
    AWS_SHARED_CREDENTIALS_FILE: '/dev/null',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_PAGER: '',
  };
}

/** Runs `aws ARGS --endpoint-url <s3rver>`; stdout as a Buffer. */
export async function awsCli(...args: string[]): Promise<{ stdout: Buffer; stderr: Buffer }> {
  try {
    return await execFileP('aws', [...args, '--endpoint-url', testEnv().s3Endpoint], {
      env: { ...process.env, ...s3TestProcessEnv() },
      timeout: 60_000,
      maxBuffer: 64 * 1024 * 1024,
      encoding: 'buffer',
    });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error('awscli (`aws`) is not on PATH: test/env/setup.sh installs it (apt-get install -y awscli)');
    throw err;
  }
}
