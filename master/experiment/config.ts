// The experiment config: YAML text -> validated, defaulted ExperimentConfig.
// Every problem is reported at once, each naming its key path.
import * as YAML from 'yaml';
import { z } from 'zod';
import { DetError } from '../../common/errors';
import { asRecord, collectProblems, problemsError, type ConfigProblem } from '../../common/config/pipeline';
import { checkpointStorageSchema } from '../../common/storage';
import type { CheckpointStorageSpec, DataInput } from '../../common/types';
import { dataInputProblems, dataInputSchema } from './data-inputs';
import { parseBytes, parseDurationMs } from './units';

const scalar = z.union([z.string(), z.number(), z.boolean()]);

const hparamSchema = z.union([
  scalar,
  z.object({ type: z.literal('const'), val: scalar }).strict(),
  z.object({ type: z.literal('categorical'), vals: z.array(scalar).min(1, 'needs at least one value') }).strict(),
  z.object({ type: z.literal('int'), minval: z.number().int(), maxval: z.number().int(), count: z.number().int().positive().optional() }).strict(),
  z.object({ type: z.literal('double'), minval: z.number(), maxval: z.number(), count: z.number().int().positive().optional() }).strict(),
  z.object({ type: z.literal('log'), minval: z.number(), maxval: z.number(), base: z.number().positive().default(10), count: z.number().int().positive().optional() }).strict(),
]);

/** One hyperparameter after normalisation (bare scalars become const). */
export type Hyperparameter =
  | { type: 'const'; val: string | number | boolean }
  | { type: 'categorical'; vals: (string | number | boolean)[] }
  | { type: 'int'; minval: number; maxval: number; count?: number }
  | { type: 'double'; minval: number; maxval: number; count?: number }
  | { type: 'log'; minval: number; maxval: number; base: number; count?: number };

const envSchema = z
  .union([z.record(z.string(), scalar), z.array(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*=/, 'must look like NAME=value'))])
  .transform((v) => (Array.isArray(v) ? Object.fromEntries(v.map((s) => [s.slice(0, s.indexOf('=')), s.slice(s.indexOf('=') + 1)])) : Object.fromEntries(Object.entries(v).map(([k, x]) => [k, String(x)]))));

const schema = z
  .object({
    name: z.string().min(1, 'must not be empty'),
    description: z.string().default(''),
    image: z.string().min(1, 'must not be empty'),
    pull_policy: z.enum(['missing', 'always']).default('missing'),
    entrypoint: z.union([z.string().min(1), z.array(z.string()).min(1)]).optional(),
    command: z.array(z.string()).default([]),
    environment_variables: envSchema.default({}),
    resources: z
      .object({
        slots_per_trial: z.number().int().min(0).default(1),
        resource_pool: z.string().min(1).optional(),
        priority: z.number().int().min(1).max(99).default(42),
        memory_limit: z.union([z.string(), z.number()]).optional(),
      })
      .strict()
      .default({}),
    hyperparameters: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_.-]*$/, 'names use letters, digits, _ . -'), hparamSchema).default({}),
    searcher: z
      .object({
        name: z.enum(['single', 'grid', 'random']),
        max_trials: z.number().int().positive().optional(),
        seed: z.number().int().min(0).optional(),
      })
      .strict()
      .default({ name: 'single' }),
    max_restarts: z.number().int().min(0).default(5),
    kill_grace_period: z.union([z.string(), z.number()]).default('10s'),
    /** Where checkpoints go; the master's checkpoint_storage when absent. */
    checkpoint_storage: checkpointStorageSchema.optional(),
    /** S3 prefixes mounted read-only into every trial container. */
    data: z.array(dataInputSchema).default([]),
  })
  .strict();

/** Checks between fields, on the raw input so they are reported along with schema problems. */
function crossCheck(raw: Record<string, unknown>): ConfigProblem[] {
  const problems: ConfigProblem[] = [];
  const searcher = asRecord(raw.searcher)?.name;
  for (const [name, value] of Object.entries(asRecord(raw.hyperparameters) ?? {})) {
    const hp = asRecord(value);
    if (!hp) continue;
    if (typeof hp.minval === 'number' && typeof hp.maxval === 'number' && hp.minval > hp.maxval) {
      problems.push({ path: ['hyperparameters', name, 'maxval'], message: `must be >= minval (${hp.minval})` });
    }
    if (searcher === 'grid' && (hp.type === 'double' || hp.type === 'log') && hp.count === undefined) {
      problems.push({ path: ['hyperparameters', name, 'count'], message: 'grid search needs count for double and log hyperparameters' });
    }
    if (searcher === 'grid' && hp.type === 'int' && hp.count === undefined && typeof hp.minval === 'number' && typeof hp.maxval === 'number' && hp.maxval - hp.minval + 1 > 1000) {
      problems.push({ path: ['hyperparameters', name, 'count'], message: 'grid search over a range of more than 1000 integers needs count' });
    }
  }
  if (searcher === 'random' && asRecord(raw.searcher)?.max_trials === undefined) {
    problems.push({ path: ['searcher', 'max_trials'], message: 'required for the random searcher' });
  }
  const memory = asRecord(raw.resources)?.memory_limit;
  if ((typeof memory === 'string' || typeof memory === 'number') && parseBytes(memory) === undefined) {
    problems.push({ path: ['resources', 'memory_limit'], message: `cannot parse ${JSON.stringify(memory)}: use bytes or a size like 512Mi or 2G` });
  }
  const grace = raw.kill_grace_period;
  if ((typeof grace === 'string' || typeof grace === 'number') && parseDurationMs(grace) === undefined) {
    problems.push({ path: ['kill_grace_period'], message: `cannot parse ${JSON.stringify(grace)}: use a duration like 30s or 2m` });
  }
  problems.push(...dataInputProblems(raw.data));
  return problems;
}

/** A validated experiment config with defaults filled in. */
export interface ExperimentConfig {
  name: string;
  description: string;
  image: string;
  pullPolicy: 'missing' | 'always';
  /** Exec form; a string entrypoint becomes ["sh", "-c", string]. Empty = image default. */
  entrypoint: string[];
  command: string[];
  environmentVariables: Record<string, string>;
  resources: { slotsPerTrial: number; resourcePool: string | undefined; priority: number; memoryLimitBytes: number };
  hyperparameters: Record<string, Hyperparameter>;
  searcher: { name: 'single' | 'grid' | 'random'; maxTrials: number | undefined; seed: number | undefined };
  maxRestarts: number;
  killGracePeriodMs: number;
  /** Undefined until the master fills in its default (see withDefaultCheckpointStorage). */
  checkpointStorage: CheckpointStorageSpec | undefined;
  data: DataInput[];
}

/** Parses and validates experiment YAML; throws DET_ERR_EXPERIMENT_CONFIG_INVALID listing every problem. */
export function parseExperimentConfig(yamlText: string): ExperimentConfig {
  const doc = YAML.parseDocument(yamlText, { uniqueKeys: true, prettyErrors: true });
  if (doc.errors.length > 0) {
    const lines = doc.errors.map((e) => {
      const pos = e.linePos?.[0];
      return `${pos ? `line ${pos.line}, column ${pos.col}: ` : ''}${e.message.split('\n')[0].replace(/ at line \d+, column \d+:?$/, '')}`;
    });
    throw invalid('is not valid YAML', lines);
  }
  const raw: unknown = doc.toJS();
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw invalid('must be a YAML mapping', ['(root): expected keys like name, image, hyperparameters, searcher']);
  }
  const result = schema.safeParse(raw);
  const problems = collectProblems(result.success ? undefined : result.error, crossCheck(raw as Record<string, unknown>));
  if (!result.success || problems.length > 0) throw invalid('is invalid', problems);
  const c = result.data;
  return {
    name: c.name,
    description: c.description,
    image: c.image,
    pullPolicy: c.pull_policy,
    entrypoint: c.entrypoint === undefined ? [] : typeof c.entrypoint === 'string' ? ['sh', '-c', c.entrypoint] : c.entrypoint,
    command: c.command,
    environmentVariables: c.environment_variables,
    resources: {
      slotsPerTrial: c.resources.slots_per_trial,
      resourcePool: c.resources.resource_pool,
      priority: c.resources.priority,
      memoryLimitBytes: c.resources.memory_limit === undefined ? 0 : parseBytes(c.resources.memory_limit)!,
    },
    hyperparameters: Object.fromEntries(Object.entries(c.hyperparameters).map(([k, v]) => [k, typeof v === 'object' ? (v as Hyperparameter) : { type: 'const' as const, val: v }])),
    searcher: { name: c.searcher.name, maxTrials: c.searcher.max_trials, seed: c.searcher.seed },
    maxRestarts: c.max_restarts,
    killGracePeriodMs: parseDurationMs(c.kill_grace_period)!,
    checkpointStorage: c.checkpoint_storage,
    data: c.data.map((d) => ({
      source: d.source, target: d.target,
      ...(d.region ? { region: d.region } : {}), ...(d.endpoint_url ? { endpointUrl: d.endpoint_url } : {}), ...(d.force_path_style ? { forcePathStyle: true } : {}),
    })),
  };
}

/**
 * The experiment YAML with `checkpoint_storage` set to `fallback` when it names none, so the stored
 * config says where its checkpoints go even if the master's default changes later. Comments stay.
 */
export function withDefaultCheckpointStorage(yamlText: string, fallback: CheckpointStorageSpec): string {
  const doc = YAML.parseDocument(yamlText);
  if (doc.has('checkpoint_storage')) return yamlText;
  doc.set('checkpoint_storage', doc.createNode({ ...fallback }));
  return doc.toString();
}

function invalid(what: string, lines: string[]): DetError {
  return problemsError('DET_ERR_EXPERIMENT_CONFIG_INVALID', `experiment config ${what}`, lines);
}
