// The `data` section of an experiment config: S3 prefixes the agent syncs and mounts read-only.
import * as path from 'node:path';
import { z } from 'zod';
import { asRecord, type ConfigProblem } from '../../common/config/pipeline';
import { errorMessage } from '../../common/errors';
import { parseS3Url } from '../../common/storage/s3-url';

/** Container paths the agent uses itself (DET_CHECKPOINT_DIR, DET_LATEST_CHECKPOINT live below). */
export const RESERVED_CONTAINER_ROOT = '/det';

/** Schema of one `data` entry; cross-entry checks are in dataInputProblems. */
export const dataInputSchema = z
  .object({
    source: z.string().min(1),
    target: z.string().min(1),
    region: z.string().min(1).optional(),
    endpoint_url: z.string().url().optional(),
    force_path_style: z.boolean().optional(),
  })
  .strict();

/** Problems of the raw `data` list: malformed sources, unsafe or overlapping targets. */
export function dataInputProblems(raw: unknown): ConfigProblem[] {
  if (!Array.isArray(raw)) return [];
  const problems: ConfigProblem[] = [];
  const targets: { index: number; target: string }[] = [];
  raw.forEach((entry, index) => {
    const e = asRecord(entry);
    if (!e) return;
    if (typeof e.source === 'string') {
      try {
        parseS3Url(e.source);
      } catch (err) {
        problems.push({ path: ['data', index, 'source'], message: errorMessage(err) });
      }
    }
    if (typeof e.target !== 'string') return;
    const problem = targetProblem(e.target);
    if (problem) {
      problems.push({ path: ['data', index, 'target'], message: problem });
      return;
    }
    const target = path.posix.normalize(e.target).replace(/\/+$/, '');
    const clash = targets.find((t) => t.target === target || target.startsWith(`${t.target}/`) || t.target.startsWith(`${target}/`));
    if (clash) problems.push({ path: ['data', index, 'target'], message: `overlaps data[${clash.index}].target (${clash.target}); give each input its own directory` });
    targets.push({ index, target });
  });
  return problems;
}

function targetProblem(target: string): string | undefined {
  if (!target.startsWith('/')) return 'must be an absolute path inside the container, e.g. /data/mnist';
  if (target.split('/').some((seg) => seg === '..' || seg === '.')) return "must not contain '.' or '..' segments";
  const norm = path.posix.normalize(target).replace(/\/+$/, '');
  if (norm === '') return 'must not be the container root';
  if (norm === RESERVED_CONTAINER_ROOT || norm.startsWith(`${RESERVED_CONTAINER_ROOT}/`)) return `${RESERVED_CONTAINER_ROOT} is reserved for the agent (checkpoints)`;
  return undefined;
}
