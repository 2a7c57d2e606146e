// The admin API (determined.api.v1.Determined) over the cluster and the store.
import { DetError } from '../../common/errors';
import { VERSION } from '../../common/types';
import type { DeterminedHandlers } from '../../common/proto-gen/determined/api/v1/Determined';
import type { ProvisionerPool } from '../../common/proto-gen/determined/api/v1/ProvisionerPool';
import { ExperimentDeleter } from '../checkpoints/deletion';
import type { AgentEntry } from '../cluster/agents';
import type { Cluster } from '../cluster/cluster';
import { checkpointHandlers } from './checkpoints';
import { agentToProto, experimentToProto, slotsToProto, trialToProto } from './convert';
import { serveTrialLogs } from './trial-logs';
import { unary } from './unary';

/** Facts about the running master for GetMaster. */
export interface MasterFacts {
  clusterName: string;
  startedAtMs: number;
  tls: boolean;
}

/** Where GetProvisionerStatus reads from (the provisioner service, when any pool has a provider). */
export interface ProvisionerStatusSource {
  status(pool: string | undefined): Promise<ProvisionerPool[]>;
}

/**
 * Builds the service implementation. `deleter` runs DeleteExperiment (default: one on the cluster's store with
 * the master's AWS default credential chain).
 */
export function apiHandlers(cluster: Cluster, facts: MasterFacts, provisioner?: ProvisionerStatusSource, deleter?: ExperimentDeleter): DeterminedHandlers {
  const store = cluster.store;
  const trialOf = (alloc: string) => cluster.trialOfAllocation(alloc);
  const agent = (id: string) => {
    const a = cluster.agents.get(id);
    if (!a) throw new DetError('DET_ERR_AGENT_NOT_FOUND', `agent ${id} not found`);
    return a;
  };
  const slotOf = (a: AgentEntry, slotId: number) => slotsToProto(a, trialOf).find((s) => s.id === slotId)!;
  const experiment = async (id: number) => {
    const e = await store.getExperiment(id);
    if (!e) throw new DetError('DET_ERR_EXPERIMENT_NOT_FOUND', `experiment ${id} not found`);
    return e;
  };

  return {
    GetMaster: unary(async () => ({
      version: VERSION, masterId: cluster.masterId, clusterId: cluster.clusterId, clusterName: facts.clusterName, database: store.kind,
      startedAtMs: facts.startedAtMs, tls: facts.tls, connectedAgents: cluster.agents.connectedCount(),
    })),
    ListAgents: unary(async (req) => ({
      agents: cluster.agents.all().filter((a) => !req.resourcePool || a.pool === req.resourcePool).map((a) => agentToProto(a, trialOf)),
    })),
    GetAgent: unary(async (req) => ({ agent: agentToProto(agent(req.agentId), trialOf) })),
    ListSlots: unary(async (req) => ({ slots: slotsToProto(agent(req.agentId), trialOf) })),
    DisableAgent: unary(async (req) => ({ agent: agentToProto(await cluster.admin.disableAgent(req.agentId, req.drain), trialOf) })),
    EnableAgent: unary(async (req) => ({ agent: agentToProto(await cluster.admin.enableAgent(req.agentId), trialOf) })),
    DisableSlot: unary(async (req) => ({ slot: slotOf(await cluster.admin.setSlotEnabled(req.agentId, req.slotId, false, req.drain), req.slotId) })),
    EnableSlot: unary(async (req) => ({ slot: slotOf(await cluster.admin.setSlotEnabled(req.agentId, req.slotId, true, false), req.slotId) })),
    CreateExperiment: unary(async (req) => {
      const { experiment: e, trials } = await cluster.createExperiment(req.configYaml);
      return { experiment: experimentToProto(e, trials), trials: trials.map(trialToProto) };
    }),
    ListExperiments: unary(async () => {
      const exps = await store.listExperiments();
      return { experiments: await Promise.all(exps.map(async (e) => experimentToProto(e, await store.listTrials(e.id)))) };
    }),
    GetExperiment: unary(async (req) => {
      const e = await experiment(req.experimentId);
      const trials = await store.listTrials(e.id);
      return { experiment: experimentToProto(e, trials), trials: trials.map(trialToProto) };
    }),
    KillExperiment: unary(async (req) => {
      const e = await cluster.killExperiment(req.experimentId);
      return { experiment: experimentToProto(e, await store.listTrials(e.id)) };
    }),
    ListTrials: unary(async (req) => {
      await experiment(req.experimentId);
      return { trials: (await store.listTrials(req.experimentId)).map(trialToProto) };
    }),
    GetTrial: unary(async (req) => {
      const t = await store.getTrial(req.trialId);
      if (!t) throw new DetError('DET_ERR_TRIAL_NOT_FOUND', `trial ${req.trialId} not found`);
      return { trial: trialToProto(t) };
    }),
    TrialLogs: (call) => void serveTrialLogs(call, cluster),
    GetProvisionerStatus: unary(async (req) => ({ pools: provisioner ? await provisioner.status(req.resourcePool || undefined) : [] })),
    ListResourcePools: unary(async () => ({
      resourcePools: cluster.resourcePools.map((p) => {
        const agents = cluster.agents.all().filter((a) => a.pool === p.name && a.channel);
        return {
          name: p.name, description: p.description, numAgents: agents.length,
          slotsTotal: agents.reduce((n, a) => n + (a.enabled ? a.devices.length : 0), 0),
          slotsUsed: agents.reduce((n, a) => n + a.usedSlots.size, 0),
          queuedTasks: cluster.queuedIn(p.name), isDefault: p.name === cluster.defaultPool,
        };
      }),
    })),
    ...checkpointHandlers(store, deleter ?? new ExperimentDeleter({ store })),
  };
}
