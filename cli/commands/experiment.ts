// det experiment create | list | describe | kill | delete | list-trials | config.
import * as fs from 'node:fs';
import type { Command } from 'commander';
import { formatBytes } from '../../common/format';
import { DetError } from '../../common/errors';
import type { GetExperimentResponse__Output } from '../../common/proto-gen/determined/api/v1/GetExperimentResponse';
import { parseId } from '../args';
import type { Context } from '../context';
import { Interrupted, UsageError } from '../errors';
import { followExperiment } from '../follow';
import { formatTime, keyValues, stateCounts, table } from '../format';
import { experimentView, trialView, type ExperimentView } from '../views';
import { formatLogLine, trialTable } from './trial';

/** Reads an experiment config, failing with a message that names the file and the problem. */
export function readConfigFile(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'it is a directory' : code === 'EACCES' ? 'permission denied' : (err as Error).message;
    throw new DetError('DET_ERR_INVALID_ARGUMENT', `cannot read the experiment config ${file}: ${why}`);
  }
}

function experimentTable(experiments: ExperimentView[]): string {
  return table(
    ['ID', 'Name', 'State', 'Trials', 'Trial States', 'Resource Pool', 'Start Time', 'End Time'],
    experiments.map((e) => [e.id, e.name, e.state, e.numTrials, stateCounts(e.trialStates), e.resourcePool, formatTime(e.createdAtMs), formatTime(e.endedAtMs)]),
  );
}

function requireExperiment(res: { experiment?: GetExperimentResponse__Output['experiment'] }, id: number) {
  if (!res.experiment) throw new Error(`the master returned no experiment for ${id}`);
  return experimentView(res.experiment);
}

/** Prints how a followed experiment ended; returns the exit code (0 only for COMPLETED). */
function reportOutcome(ctx: Context, res: GetExperimentResponse__Output, id: number): number {
  const e = requireExperiment(res, id);
  const trials = res.trials.map(trialView);
  ctx.out(`Experiment ${e.id} ended: ${e.state}`);
  if (e.state === 'COMPLETED') return 0;
  ctx.out(trialTable(trials));
  for (const t of trials) {
    if (t.state !== 'COMPLETED' && t.message) ctx.out(`Trial ${t.id} ${t.state}: ${t.message}`);
  }
  ctx.err(`det: experiment ${e.id} ended ${e.state}, not COMPLETED`);
  return 1;
}

/** Registers `det experiment` (alias `e`). */
export function registerExperiment(program: Command, ctx: Context): void {
  const experiment = program.command('experiment').alias('e').description('manage experiments');

  experiment
    .command('create')
    .description('submit an experiment from a YAML config')
    .argument('<config>', 'experiment config file (YAML)')
    .option('-f, --follow', 'print the logs of all its trials until it ends; exit 0 only if it COMPLETED')
    .action(async (file: string, opts: { follow?: boolean }) => {
      const configYaml = readConfigFile(file);
      const client = ctx.client();
      const res = await client.createExperiment(configYaml);
      const id = res.experiment?.id ?? 0;
      ctx.out(`Created experiment ${id}`);
      ctx.out(`Trials: ${res.trials.map((t) => t.id).join(', ') || 'none'}`);
      if (!opts.follow) return;
      let final: GetExperimentResponse__Output;
      try {
        final = await followExperiment(
          client,
          id,
          res.trials,
          (trialId, log) => ctx.out(`[trial ${trialId}] ${formatLogLine(log)}`),
          (err) => ctx.err(`det: ${err.message}; reconnecting...`),
        );
      } catch (err) {
        if (err instanceof Interrupted) throw new Interrupted(`stopped following; experiment ${id} keeps running (det experiment kill ${id} to stop it)`);
        throw err;
      }
      ctx.exitCode = reportOutcome(ctx, final, id);
    });

  experiment
    .command('list')
    .alias('ls')
    .description('list experiments, newest first')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const experiments = (await ctx.client().listExperiments()).experiments.map(experimentView);
      if (opts.json) return ctx.json(experiments);
      ctx.out(experimentTable(experiments));
    });

  experiment
    .command('describe')
    .description('describe an experiment and its trials')
    .argument('<experiment-id>', 'experiment id', parseId)
    .option('--json', 'print JSON')
    .action(async (id: number, opts: { json?: boolean }) => {
      const res = await ctx.client().getExperiment(id);
      const e = requireExperiment(res, id);
      const trials = res.trials.map(trialView);
      if (opts.json) return ctx.json({ experiment: e, trials });
      ctx.out(
        keyValues([
          ['Experiment ID', e.id],
          ['Name', e.name],
          ['State', e.state],
          ['Resource Pool', e.resourcePool],
          ['Image', e.image],
          ['Slots per Trial', e.slotsPerTrial],
          ['Priority', e.priority],
          ['Start Time', formatTime(e.createdAtMs)],
          ['End Time', formatTime(e.endedAtMs)],
          ['Trials', `${e.numTrials}${stateCounts(e.trialStates) ? ` (${stateCounts(e.trialStates)})` : ''}`],
        ]),
      );
      ctx.out();
      ctx.out(trialTable(trials));
    });

  experiment
    .command('kill')
    .description('cancel every unfinished trial of an experiment')
    .argument('<experiment-id>', 'experiment id', parseId)
    .action(async (id: number) => {
      const e = requireExperiment(await ctx.client().killExperiment(id), id);
      ctx.out(`Killed experiment ${e.id} (state: ${e.state})`);
    });

  experiment
    .command('delete')
    .description('delete an ended experiment: its checkpoints from storage first, then all its records')
    .argument('<experiment-id>', 'experiment id', parseId)
    .option('-y, --yes', 'do not ask for confirmation')
    .action(async (id: number, opts: { yes?: boolean }) => {
      const client = ctx.client();
      if (!opts.yes) {
        if (!ctx.confirm) throw new UsageError(`not deleting experiment ${id} without confirmation: no terminal to ask on; pass --yes`);
        const e = requireExperiment(await client.getExperiment(id), id);
        // A running experiment is refused by the master with what to do; asking first would be pointless.
        if (e.state !== 'ACTIVE' && e.state !== 'STOPPING_CANCELED') {
          const left = (await client.listCheckpoints(id)).checkpoints.filter((c) => c.state !== 'CHECKPOINT_STATE_DELETED');
          const bytes = left.reduce((n, c) => n + c.totalSize, 0);
          const question =
            `Delete experiment ${id} (${e.name}, ${e.state}, ${e.numTrials} trial(s)) and its ${left.length} checkpoint(s) ` +
            `(${formatBytes(bytes)}) from storage? This cannot be undone. [y/N] `;
          if (!(await ctx.confirm(question))) {
            ctx.out(`Experiment ${id} was not deleted`);
            return;
          }
        }
      }
      let res;
      try {
        res = await client.deleteExperiment(id);
      } catch (err) {
        if (err instanceof Interrupted) {
          throw new Interrupted(`stopped waiting; the master keeps deleting experiment ${id} (det experiment describe ${id} shows DELETING until it is gone)`);
        }
        throw err;
      }
      ctx.out(`Deleted experiment ${id}: ${res.checkpointsDeleted} checkpoint(s), ${res.objectsDeleted} object(s) removed from storage`);
    });

  experiment
    .command('list-trials')
    .alias('lt')
    .description('list the trials of an experiment')
    .argument('<experiment-id>', 'experiment id', parseId)
    .option('--json', 'print JSON')
    .action(async (id: number, opts: { json?: boolean }) => {
      const trials = (await ctx.client().listTrials(id)).trials.map(trialView);
      if (opts.json) return ctx.json(trials);
      ctx.out(trialTable(trials));
    });

  experiment
    .command('config')
    .description('print the config an experiment was submitted with')
    .argument('<experiment-id>', 'experiment id', parseId)
    .action(async (id: number) => {
      ctx.out(requireExperiment(await ctx.client().getExperiment(id), id).configYaml);
    });
}
