// Loads the .proto files at run time with proto-loader. The generated types in
// common/proto-gen/ describe what this returns (keep LOADER_OPTIONS in sync
// with the flags in scripts/gen-proto.js).
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import * as path from 'node:path';
import type { ProtoGrpcType as AgentProto } from '../proto-gen/agent';
import type { ProtoGrpcType as ApiProto } from '../proto-gen/api';

/** proto-loader options matching the generated types. */
export const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true };

/** Directory holding proto/ (the repo root at run time, from dist/common/proto). */
export const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');

/** File names of the services, relative to PROTO_ROOT. */
export const PROTO_FILES = { agent: 'determined/agent/v1/agent.proto', api: 'determined/api/v1/api.proto' } as const;

/**
 * The .proto files as protobufjs JSON, built into the one-file agent bundle by
 * scripts/bundle-agent.ts (esbuild define): the bundle ships no proto/ directory.
 */
declare const __DET_PROTO_JSON__: Parameters<typeof protoLoader.fromJSON>[0] | undefined;

let cache: { agent: AgentProto; api: ApiProto; definitions: protoLoader.PackageDefinition } | undefined;

function load() {
  if (!cache) {
    const definitions =
      typeof __DET_PROTO_JSON__ === 'object'
        ? protoLoader.fromJSON(__DET_PROTO_JSON__, LOADER_OPTIONS)
        : protoLoader.loadSync([PROTO_FILES.agent, PROTO_FILES.api], { ...LOADER_OPTIONS, includeDirs: [PROTO_ROOT] });
    const pkg = grpc.loadPackageDefinition(definitions);
    cache = { agent: pkg as unknown as AgentProto, api: pkg as unknown as ApiProto, definitions };
  }
  return cache;
}

/** The agent protocol package (AgentService). */
export function agentProto(): AgentProto {
  return load().agent;
}

/** The admin API package (Determined service). */
export function apiProto(): ApiProto {
  return load().api;
}

/** The raw package definition (for server reflection). */
export function packageDefinition(): protoLoader.PackageDefinition {
  return load().definitions;
}
