// `det-agent --config-source ec2`: the agent's config comes from the instance
// itself. The master's EC2 provider renders the boot config into user data
// (common/userdata.ts); here we read it back through IMDS, together with the
// instance id and type, and turn it into one layer of the config pipeline
// (after the YAML file, before DET_* env and flags, so explicit settings win).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { mergeLayers, type ConfigLayer } from '../../common/config/pipeline';
import { DetError, errorMessage } from '../../common/errors';
import { parseAgentUserData } from '../../common/userdata';
import type { InstanceMetadata } from './imds';

/** Where the master's CA certificate from user data is written when nothing else is said. */
export const DEFAULT_EC2_RUNTIME_DIR = '/run/det-agent';

/** File name of the written CA certificate inside the runtime directory. */
export const MASTER_CA_FILE_NAME = 'master-ca.pem';

/** Options of the EC2 config source. */
export interface Ec2ConfigOptions {
  /**
   * Directory for files derived from user data (the master CA PEM). Default:
   * $RUNTIME_DIRECTORY (set by systemd's RuntimeDirectory=), else /run/det-agent.
   */
  runtimeDir?: string;
  signal?: AbortSignal;
}

/** The runtime directory: the option, else systemd's $RUNTIME_DIRECTORY (first entry), else /run/det-agent. */
export function ec2RuntimeDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.RUNTIME_DIRECTORY?.split(':')[0] || DEFAULT_EC2_RUNTIME_DIR;
}

/**
 * Reads instance id, type and user data from IMDS and returns the agent config
 * layer they describe. Throws DET_ERR_CONFIG_INVALID (one error) when IMDS is
 * unreachable or the user data is missing or malformed.
 */
export async function ec2ConfigLayer(imds: InstanceMetadata, opts: Ec2ConfigOptions = {}): Promise<ConfigLayer> {
  const instanceId = await imds.instanceId(opts.signal);
  const instanceType = await imds.instanceType(opts.signal);
  const boot = parseAgentUserData(await imds.userData(opts.signal));

  let tls: ConfigLayer | undefined;
  if (boot.tlsCaCertPem !== undefined) {
    const caCert = writeCaCert(opts.runtimeDir ?? ec2RuntimeDir(), boot.tlsCaCertPem);
    tls = { enabled: true, ca_cert: caCert, ...(boot.tlsServerName ? { server_name: boot.tlsServerName } : {}) };
  } else if (boot.tlsServerName !== undefined) {
    // A server name only means something with TLS: trust the system CAs.
    tls = { enabled: true, server_name: boot.tlsServerName };
  }

  // The pool's extra agent keys first: the join settings and the instance's
  // identity are the master's and IMDS's to say.
  return mergeLayers(boot.agent, {
    master_host: boot.masterHost,
    master_port: boot.masterPort,
    resource_pool: boot.resourcePool,
    agent_token: boot.agentToken,
    agent_id: instanceId,
    instance_id: instanceId,
    instance_type: instanceType,
    ...(tls ? { tls } : {}),
  });
}

/** Writes the CA PEM (mode 0644, atomically) and returns its path. */
function writeCaCert(dir: string, pem: string): string {
  const file = path.join(dir, MASTER_CA_FILE_NAME);
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    fs.writeFileSync(tmp, pem.endsWith('\n') ? pem : pem + '\n', { mode: 0o644 });
    fs.chmodSync(tmp, 0o644); // the umask may have narrowed it; the CA is public
    fs.renameSync(tmp, file);
  } catch (err) {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // nothing was written
    }
    const code = (err as NodeJS.ErrnoException).code ?? errorMessage(err);
    throw new DetError('DET_ERR_CONFIG_INVALID', `cannot write the master CA certificate from EC2 user data to ${file}: ${code}: run det-agent as a user that may write ${dir} (systemd: RuntimeDirectory=det-agent)`);
  }
  return file;
}
