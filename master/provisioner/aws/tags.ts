// The tags that mark an EC2 instance (and its volumes) as one of this cluster's agents. The
// provider finds its instances by these tags and ignores every instance that lacks them.
import type { Tag } from '@aws-sdk/client-ec2';

/** Cluster the instance belongs to. */
export const TAG_CLUSTER_ID = 'det:cluster-id';
/** Resource pool the agent joins. */
export const TAG_POOL = 'det:pool';
/** Master that launched the instance. */
export const TAG_MASTER_ID = 'det:master-id';
/** Marks resources this software created (IAM conditions key on it). */
export const TAG_MANAGED_BY = 'det:managed-by';
/** Value of det:managed-by. */
export const MANAGED_BY = 'determined-aws';

/** EC2's limits on tags (per resource, key and value length). */
const MAX_TAGS = 50;
const MAX_KEY = 128;
const MAX_VALUE = 256;

/** Who an agent instance belongs to. */
export interface AgentTagScope {
  clusterId: string;
  masterId: string;
  pool: string;
}

/** Problems with user-supplied tags (empty when fine). */
export function validateUserTags(tags: Record<string, string>): string[] {
  const problems: string[] = [];
  const keys = Object.keys(tags);
  // Name and our four det: tags are added to the user's.
  if (keys.filter((k) => k !== 'Name').length + 5 > MAX_TAGS) problems.push(`at most ${MAX_TAGS - 5} tags (EC2 allows ${MAX_TAGS} per resource, 5 are ours)`);
  for (const key of keys) {
    if (/^(det|aws):/i.test(key)) problems.push(`"${key}": keys starting with det: or aws: are reserved`);
    if (key.length === 0 || key.length > MAX_KEY) problems.push(`"${key}": keys must be 1 to ${MAX_KEY} characters`);
    const value = tags[key];
    if (typeof value !== 'string' || value.length > MAX_VALUE) problems.push(`"${key}": value must be a string of at most ${MAX_VALUE} characters`);
  }
  return problems;
}

/** Tags for a new agent instance and its volumes: Name, the user's tags, then ours (which win). */
export function agentTags(scope: AgentTagScope, userTags: Record<string, string> = {}): Tag[] {
  const tags = new Map<string, string>([['Name', `det-agent-${scope.pool}`]]);
  for (const [k, v] of Object.entries(userTags)) tags.set(k, v);
  tags.set(TAG_CLUSTER_ID, scope.clusterId);
  tags.set(TAG_POOL, scope.pool);
  tags.set(TAG_MASTER_ID, scope.masterId);
  tags.set(TAG_MANAGED_BY, MANAGED_BY);
  return [...tags].map(([Key, Value]) => ({ Key, Value }));
}

/** Whether `tags` mark an instance as this cluster's agent in `pool`. */
export function isOurInstance(tags: Tag[] | undefined, clusterId: string, pool: string): boolean {
  const get = (key: string) => tags?.find((t) => t.Key === key)?.Value;
  return get(TAG_MANAGED_BY) === MANAGED_BY && get(TAG_CLUSTER_ID) === clusterId && get(TAG_POOL) === pool;
}
