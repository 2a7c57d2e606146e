// CheckpointStorageSpec <-> the CheckpointStorage protobuf message (agent.proto), which both the
// agent protocol (TaskSpec) and the admin API (Checkpoint) carry.
import type { CheckpointStorage__Output, CheckpointStorage as CheckpointStorageMsg } from '../proto-gen/determined/agent/v1/CheckpointStorage';
import type { CheckpointStorageSpec } from '../types';

/** Spec -> protobuf (absent optional fields become empty / false). */
export function storageToProto(c: CheckpointStorageSpec): CheckpointStorageMsg {
  if (c.type === 'shared_fs') return { type: 'shared_fs', hostPath: c.host_path };
  return { type: 's3', bucket: c.bucket, prefix: c.prefix ?? '', region: c.region ?? '', endpointUrl: c.endpoint_url ?? '', forcePathStyle: c.force_path_style ?? false };
}

/**
 * protobuf -> spec as configured (empty optional fields left out); undefined when the message is
 * missing or names an unknown type, so each side can say what that means for it.
 */
export function storageFromProto(c: CheckpointStorage__Output | null | undefined): CheckpointStorageSpec | undefined {
  if (c?.type === 'shared_fs') return { type: 'shared_fs', host_path: c.hostPath };
  if (c?.type !== 's3') return undefined;
  return {
    type: 's3',
    bucket: c.bucket,
    ...(c.prefix ? { prefix: c.prefix } : {}),
    ...(c.region ? { region: c.region } : {}),
    ...(c.endpointUrl ? { endpoint_url: c.endpointUrl } : {}),
    ...(c.forcePathStyle ? { force_path_style: true } : {}),
  };
}
