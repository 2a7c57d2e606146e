// Consolidation (pure): a 4-slot instance that still runs one long task costs four slots until
// that task ends. With `consolidation.enabled`, the decider moves such tasks to free slots on
// other busy instances, so the emptied instance can be terminated:
//
// 1. Sources are busy instances whose every task has a checkpoint, least used first. A source's
//    tasks (biggest first) must fit best-fit into the free slots left on OTHER busy, enabled
//    instances after the queue was placed; an instance that receives work is no source, and idle
//    instances are never targets (they are about to be terminated).
// 2. Hysteresis: a source is only emptied once that has held for min_underused_period (the
//    service remembers since when, from `underused` of each plan), so arrivals that refill the
//    holes in a few minutes cancel it.
// 3. A chosen source is cordoned (disabled: nothing new lands on it). Each of its tasks is moved
//    (stopped with its grace period and requeued without counting a restart; it resumes from its
//    latest checkpoint) only while that checkpoint is at most max_checkpoint_age old, so a move
//    repeats little work; the others wait for their next checkpoint.
// 4. A cordoned instance whose tasks no longer fit elsewhere is uncordoned; one that runs nothing
//    is terminated by the decider at once.
import type { InstanceView, ScalePlan, TaskView } from './types';

/** Free slots on a busy agent that moved tasks may use. */
export interface TargetBin {
  id: string;
  free: number;
}

/** What consolidation adds to the plan. */
export interface ConsolidationPlan {
  cordon: ScalePlan['cordon'];
  uncordon: ScalePlan['uncordon'];
  move: ScalePlan['move'];
  /** Instances whose tasks could all move now (the service tracks since when). */
  underused: string[];
}

/** Settings the decider passes in (the pool's consolidation settings, enabled). */
export interface ConsolidationInput {
  nowMs: number;
  maxCheckpointAgeMs: number;
  minUnderusedPeriodMs: number;
  /** Connected instances that run tasks, enabled or cordoned (not disabled otherwise), not terminating. */
  busy: InstanceView[];
  /** Free slots per enabled busy instance after the queue was placed. */
  free: Map<string, number>;
  /** Instances the queued work is expected to land on: targets, never sources. */
  needed: ReadonlySet<string>;
}

const used = (i: InstanceView) => (i.tasks ?? []).reduce((n, t) => n + t.slots, 0);

/** Decides which instances to empty and which tasks to move now. Pure. */
export function consolidate(c: ConsolidationInput): ConsolidationPlan {
  const out: ConsolidationPlan = { cordon: [], uncordon: [], move: [], underused: [] };
  const bins: TargetBin[] = c.busy.filter((i) => !i.cordoned && i.agentConnected).map((i) => ({ id: i.id, free: c.free.get(i.id) ?? 0 }));
  const receiving = new Set<string>(c.needed);
  const sources = new Set<string>();
  // Cordoned instances first (finish what was started), then the least used.
  const candidates = [...c.busy].sort((a, b) => Number(!!b.cordoned) - Number(!!a.cordoned) || used(a) - used(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const src of candidates) {
    const tasks = src.tasks;
    const why = whyNot(src, tasks, receiving);
    const placed = why === undefined ? place(tasks!, bins.filter((b) => b.id !== src.id && !sources.has(b.id))) : undefined;
    if (!placed) {
      if (src.cordoned) out.uncordon.push({ id: src.id, reason: `consolidation stopped: ${why ?? 'its tasks no longer fit on other instances'}` });
      continue;
    }
    out.underused.push(src.id);
    const since = src.underusedSinceMs ?? null;
    if (!src.cordoned && c.minUnderusedPeriodMs > 0 && (since === null || c.nowMs - since < c.minUnderusedPeriodMs)) continue;
    // Commit: reserve the slots, and this instance neither receives nor is a target any more.
    for (const [bin, slots] of placed) {
      bin.free -= slots;
      receiving.add(bin.id);
    }
    sources.add(src.id);
    const slots = used(src);
    if (!src.cordoned) {
      out.cordon.push({ id: src.id, reason: `consolidation: its ${tasks!.length} task(s) (${slots} of ${src.slots} slots) fit on other instances; moving them so it can be terminated` });
    }
    for (const t of tasks!) {
      if (t.stopping) continue;
      const age = c.nowMs - t.lastCheckpointAtMs!;
      if (age <= c.maxCheckpointAgeMs) out.move.push({ id: src.id, taskId: t.id, reason: `consolidation of instance ${src.id}: resumes elsewhere from its checkpoint of ${Math.round(age / 1000)}s ago` });
    }
  }
  return out;
}

function whyNot(src: InstanceView, tasks: TaskView[] | undefined, receiving: Set<string>): string | undefined {
  if (receiving.has(src.id)) return 'it receives queued or moved tasks';
  if (!tasks || tasks.length === 0 || tasks.length !== src.runningTasks) return 'its tasks are not known';
  const fresh = tasks.find((t) => t.lastCheckpointAtMs === null);
  if (fresh) return `task ${fresh.id} has no checkpoint`;
  return undefined;
}

/** Best fit, biggest task first; the bins each task would take, or undefined if one does not fit. */
function place(tasks: TaskView[], bins: TargetBin[]): Map<TargetBin, number> | undefined {
  const taken = new Map<TargetBin, number>();
  const free = (b: TargetBin) => b.free - (taken.get(b) ?? 0);
  for (const t of [...tasks].sort((a, b) => b.slots - a.slots || (a.id < b.id ? -1 : 1))) {
    let best: TargetBin | undefined;
    for (const b of bins) if (free(b) >= t.slots && (!best || free(b) < free(best))) best = b;
    if (!best) return undefined;
    taken.set(best, (taken.get(best) ?? 0) + t.slots);
  }
  return taken;
}
