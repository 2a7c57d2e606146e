// det trial describe | logs, and the trial table shared with det experiment.
import type { Command } from 'commander';
import type { TrialLog__Output } from '../../common/proto-gen/determined/api/v1/TrialLog';
import { parseCount, parseId } from '../args';
import type { Context } from '../context';
import { streamTrialLogs } from '../follow';
import { formatTime, keyValues, table } from '../format';
import { logView, trialView, type TrialView } from '../views';

function hparamsText(h: unknown): string {
  return typeof h === 'string' ? h : JSON.stringify(h);
}

/** The trial table of `det experiment describe` and `list-trials`. */
export function trialTable(trials: TrialView[]): string {
  return table(
    ['Trial ID', 'State', 'Agent', 'Slots', 'Restarts', 'Exit Code', 'Start Time', 'End Time', 'Hyperparameters', 'Message'],
    trials.map((t) => [
      t.id,
      t.state,
      t.agentId,
      t.slotIds.join(','),
      t.restarts,
      t.exitCode,
      formatTime(t.createdAtMs),
      formatTime(t.endedAtMs),
      hparamsText(t.hparams),
      t.message,
    ]),
  );
}

/** One log line as printed: the text, or "TIME [stream] text" with timestamps. */
export function formatLogLine(log: TrialLog__Output, timestamps = false): string {
  const text = log.text.replace(/\r?\n$/, '');
  return timestamps ? `${new Date(log.timestampMs).toISOString()} [${log.stream}] ${text}` : text;
}

/** Registers `det trial` (alias `t`). */
export function registerTrial(program: Command, ctx: Context): void {
  const trial = program.command('trial').alias('t').description('inspect trials');
  trial
    .command('describe')
    .description('describe one trial')
    .argument('<trial-id>', 'trial id', parseId)
    .option('--json', 'print JSON')
    .action(async (id: number, opts: { json?: boolean }) => {
      const res = await ctx.client().getTrial(id);
      if (!res.trial) throw new Error(`the master returned no trial for ${id}`);
      const t = trialView(res.trial);
      if (opts.json) return ctx.json(t);
      ctx.out(
        keyValues([
          ['Trial ID', t.id],
          ['Experiment ID', t.experimentId],
          ['State', t.state],
          ['Hyperparameters', hparamsText(t.hparams)],
          ['Task ID', t.taskId],
          ['Allocation ID', t.allocationId],
          ['Agent', t.agentId],
          ['Slots', t.slotIds.join(',')],
          ['Restarts', t.restarts],
          ['Exit Code', t.exitCode],
          ['Start Time', formatTime(t.createdAtMs)],
          ['End Time', formatTime(t.endedAtMs)],
          ['Message', t.message],
        ]),
      );
    });
  trial
    .command('logs')
    .description("print a trial's logs")
    .argument('<trial-id>', 'trial id', parseId)
    .option('-f, --follow', 'keep printing new lines until the trial ends')
    .option('--tail <n>', 'start with only the last N lines', parseCount)
    .option('--timestamps', 'prefix each line with its time and stream')
    .option('--json', 'print one JSON object per line')
    .action(async (id: number, opts: { follow?: boolean; tail?: number; timestamps?: boolean; json?: boolean }) => {
      await streamTrialLogs(
        ctx.client(),
        id,
        { follow: !!opts.follow, tail: opts.tail, onReconnect: (err) => ctx.err(`det: ${err.message}; reconnecting...`) },
        (log) => ctx.out(opts.json ? JSON.stringify(logView(id, log)) : formatLogLine(log, opts.timestamps)),
      );
    });
}
