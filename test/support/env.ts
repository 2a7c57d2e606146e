// The real services that integration and e2e tests run against. test/env/with-testenv.sh (what
// `npm test` runs) starts dockerd, a registry and PostgreSQL and exports where they are; tests
// read them here. A missing variable is an error, never a silent skip.

export interface TestEnv {
  /** Path of the test dockerd's unix socket (DET_TEST_DOCKER_SOCKET). */
  dockerSocket: string;
  /** host:port of the plain-HTTP test registry on loopback (DET_TEST_REGISTRY). */
  registry: string;
  /** The busybox base image as pushed to the registry, e.g. 127.0.0.1:5000/det-test/busybox:latest (DET_TEST_IMAGE). */
  image: string;
  /** The same image under its local-only name, e.g. det-test/busybox:latest (DET_TEST_LOCAL_IMAGE). */
  localImage: string;
  /** postgres:// URL of the test database (DET_TEST_PG_URL). */
  pgUrl: string;
  /** http:// endpoint of the s3rver S3 API on loopback, e.g. http://127.0.0.1:4569 (DET_TEST_S3_ENDPOINT). */
  s3Endpoint: string;
}

const HOW_TO_RUN =
  "run the tests with `npm test` (test/env/with-testenv.sh starts dockerd, the registry, PostgreSQL and s3rver)";

function requireVar(name: string): string {
  const value = process.env[name];
  if (value === undefined || value.trim() === "") {
    throw new Error(`${name} is not set: ${HOW_TO_RUN}`);
  }
  return value;
}

/** Where the test services are; throws if the tests were not started through with-testenv.sh. */
export function testEnv(): TestEnv {
  return {
    dockerSocket: requireVar("DET_TEST_DOCKER_SOCKET"),
    registry: requireVar("DET_TEST_REGISTRY"),
    image: requireVar("DET_TEST_IMAGE"),
    localImage: requireVar("DET_TEST_LOCAL_IMAGE"),
    pgUrl: requireVar("DET_TEST_PG_URL"),
    s3Endpoint: requireVar("DET_TEST_S3_ENDPOINT"),
  };
}

export interface WaitForOptions {
  /** Give up after this long (default 30 s). */
  timeoutMs?: number;
  /** Pause between checks (default 100 ms). */
  intervalMs?: number;
  /** What is awaited, for the timeout error ("job 3 to reach COMPLETED"). */
  what: string;
}

/**
 * Polls `cond` until it returns true, or throws once `timeoutMs` has passed. A check that throws
 * counts as "not yet"; its last error is reported in the timeout error. Tests wait for
 * conditions with this, never with fixed sleeps.
 */
export async function waitFor(
  cond: () => Promise<boolean> | boolean,
  { timeoutMs = 30_000, intervalMs = 100, what }: WaitForOptions,
): Promise<void> {
  const start = Date.now();
  const deadline = start + timeoutMs;
  let attempts = 0;
  let lastError: unknown;
  for (;;) {
    attempts++;
    try {
      if (await cond()) return;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    const left = deadline - Date.now();
    if (left <= 0) break;
    await new Promise((resolve) => setTimeout(resolve, Math.min(intervalMs, left)));
  }
  let message = `timed out after ${Date.now() - start} ms (${attempts} checks) waiting for ${what}`;
  if (lastError !== undefined) {
    const detail = lastError instanceof Error ? lastError.message : String(lastError);
    message += `; last check failed: ${detail}`;
  }
  throw new Error(message, lastError !== undefined ? { cause: lastError } : undefined);
}
