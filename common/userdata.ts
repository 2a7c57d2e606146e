// The agent's boot config carried in EC2 user data. The master's EC2 provider
// renders it; `det-agent --config-source ec2` parses it. One module, so the
// two always agree (a test renders, parses and compares).
import * as YAML from 'yaml';
import { z } from 'zod';
import { DetError } from './errors';
import { formatIssues } from './config/pipeline';

/** First line of every user data document we render; identifies the format and version. */
export const USERDATA_HEADER = '#det-agent-config v1';

/** EC2's limit on user data (before base64). */
export const USERDATA_MAX_BYTES = 16 * 1024;

const schema = z
  .object({
    master_host: z.string().min(1),
    master_port: z.number().int().min(1).max(65535),
    resource_pool: z.string().min(1),
    agent_token: z.string().min(1),
    /** PEM of the CA that signed the master's certificate; TLS when set. */
    tls_ca_cert_pem: z.string().min(1).optional(),
    /** Name expected in the master's certificate, when it differs from master_host. */
    tls_server_name: z.string().min(1).optional(),
    /** Extra agent config keys (e.g. slot_type, container_network_mode, labels). */
    agent: z.record(z.string(), z.unknown()).default({}),
  })
  .strict();

/** What an agent needs to join the cluster on boot. */
export interface AgentBootConfig {
  masterHost: string;
  masterPort: number;
  resourcePool: string;
  agentToken: string;
  tlsCaCertPem?: string;
  tlsServerName?: string;
  /** Extra agent config keys, as in agent.yaml. */
  agent: Record<string, unknown>;
}

/** Renders user data; DET_ERR_CONFIG_INVALID when it exceeds EC2's 16 KiB limit. */
export function renderAgentUserData(cfg: AgentBootConfig): string {
  const doc = {
    master_host: cfg.masterHost,
    master_port: cfg.masterPort,
    resource_pool: cfg.resourcePool,
    agent_token: cfg.agentToken,
    ...(cfg.tlsCaCertPem ? { tls_ca_cert_pem: cfg.tlsCaCertPem } : {}),
    ...(cfg.tlsServerName ? { tls_server_name: cfg.tlsServerName } : {}),
    agent: cfg.agent,
  };
  const text = `${USERDATA_HEADER}\n${YAML.stringify(doc)}`;
  const size = Buffer.byteLength(text, 'utf8');
  if (size > USERDATA_MAX_BYTES) {
    throw new DetError('DET_ERR_CONFIG_INVALID', `agent user data is ${size} bytes, over EC2's ${USERDATA_MAX_BYTES}-byte limit: shorten the TLS CA bundle or the pool's agent settings`);
  }
  return text;
}

/** Parses user data; DET_ERR_CONFIG_INVALID naming every problem when it is missing or malformed. */
export function parseAgentUserData(text: string | undefined): AgentBootConfig {
  const where = 'EC2 user data';
  if (text === undefined || text.trim() === '') {
    throw new DetError('DET_ERR_CONFIG_INVALID', `${where} is empty: launch the instance from the det-master (its provider renders the agent config into user data)`);
  }
  if (!text.startsWith(USERDATA_HEADER)) {
    throw new DetError('DET_ERR_CONFIG_INVALID', `${where} is not a det agent config (it must start with "${USERDATA_HEADER}")`);
  }
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) throw new DetError('DET_ERR_CONFIG_INVALID', `${where} is not valid YAML: ${doc.errors[0].message.split('\n')[0]}`);
  const result = schema.safeParse(doc.toJS());
  if (!result.success) {
    const lines = formatIssues(result.error).flatMap((l) => l.split('\n'));
    throw new DetError('DET_ERR_CONFIG_INVALID', `invalid ${where} (${lines.length} problem${lines.length === 1 ? '' : 's'}):\n` + lines.map((l) => `  - ${l}`).join('\n'));
  }
  const c = result.data;
  return {
    masterHost: c.master_host,
    masterPort: c.master_port,
    resourcePool: c.resource_pool,
    agentToken: c.agent_token,
    ...(c.tls_ca_cert_pem ? { tlsCaCertPem: c.tls_ca_cert_pem } : {}),
    ...(c.tls_server_name ? { tlsServerName: c.tls_server_name } : {}),
    agent: c.agent,
  };
}
