// The agent-side task file dependencies (work dir, data cache, hash cache) for tests that build a
// ContainerManager themselves: a fresh temp work dir per call.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Logger } from '../../common/log';
import { HashCache } from '../../agent/checkpoints/hash-cache';
import type { TaskFilesDeps } from '../../agent/containers/task-files';
import { DataCache } from '../../agent/data';

/** Task file deps in a new temp directory (S3 credentials from the test's environment). */
export function testTaskFiles(log: Logger, o: Partial<TaskFilesDeps> = {}): TaskFilesDeps {
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'det-agent-work-'));
  return {
    workDir,
    dataCache: new DataCache({ root: path.join(workDir, 'data-cache'), log: log.child('data') }),
    hashCache: new HashCache(),
    log: log.child('files'),
    rescanIntervalMs: 200,
    ...o,
  };
}
