// Command-line flags of the daemons, declared as a table: each flag sets one
// config key, so flags join the config pipeline as its last layer.
import { Command, InvalidArgumentError } from 'commander';
import { COMMIT, VERSION } from '../types';
import { setPath, type ConfigLayer } from './pipeline';

/** One flag: commander syntax, the dotted config key it sets, and its help text. */
export interface FlagSpec {
  flags: string;
  /** Config key it sets; a flag without one is not config (e.g. --config-source) and lands in `options`. */
  key?: string;
  description: string;
  integer?: boolean;
}

/** Flags parsed into a config layer, the config file named by --config-file, and non-config flags by name. */
export interface ParsedFlags {
  configFile?: string;
  layer: ConfigLayer;
  options: Record<string, unknown>;
}

function integer(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError('must be an integer');
  return n;
}

/** Parses argv; commander errors (and --help/--version) are thrown as CommanderError. */
export function parseDaemonFlags(name: string, description: string, defaultConfigFile: string, specs: FlagSpec[], argv: string[]): ParsedFlags {
  const program = new Command(name)
    .description(description)
    .version(`${name} ${VERSION} (commit ${COMMIT})`, '-v, --version')
    .option('--config-file <path>', `YAML config file (default ${defaultConfigFile} if present)`)
    .exitOverride();
  const attr = (spec: FlagSpec) => program.createOption(spec.flags, spec.description).attributeName();
  for (const spec of specs) {
    if (spec.integer) program.option(spec.flags, spec.description, integer);
    else program.option(spec.flags, spec.description);
  }
  program.parse(argv, { from: 'user' });
  const opts = program.opts();
  const layer: ConfigLayer = {};
  const options: Record<string, unknown> = {};
  for (const spec of specs) {
    const value = opts[attr(spec)];
    if (value === undefined) continue;
    if (spec.key) setPath(layer, spec.key, value);
    else options[attr(spec)] = value;
  }
  return { configFile: opts.configFile as string | undefined, layer, options };
}
