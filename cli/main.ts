// det: the command line of the cluster. Wires the commands into commander and
// turns every outcome into an exit code: 0 ok, 1 failure, 2 usage, 130 Ctrl-C.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline/promises';
import { Command, CommanderError } from 'commander';
import { rootAbortController } from '../common/abort';
import { DetError, errorMessage } from '../common/errors';
import { registerAgent } from './commands/agent';
import { registerCheckpoint } from './commands/checkpoint';
import { registerExperiment } from './commands/experiment';
import { registerMaster } from './commands/master';
import { registerResourcePool } from './commands/resource-pool';
import { registerProvisioner } from './commands/provisioner';
import { registerSlot } from './commands/slot';
import { registerTrial } from './commands/trial';
import { Context, type CliIO } from './context';
import { EXIT, Interrupted, UsageError } from './errors';

export type { CliIO } from './context';

function version(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.resolve(__dirname, '..', '..', 'package.json'), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The det program for one invocation. */
export function buildProgram(ctx: Context, io: CliIO): Command {
  const program = new Command('det')
    .description('Determined on AWS: manage the master, agents, experiments and trials')
    .exitOverride()
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr, outputError: (text, write) => write(`det: ${text}`) })
    .allowExcessArguments(false)
    .option('-m, --master <address>', 'master address HOST:PORT (env DET_MASTER; default 127.0.0.1:8080)')
    .option('--cert-file <path>', 'CA certificate to trust for the master; enables TLS (env DET_MASTER_CERT_FILE)')
    .option('--cert-name <name>', 'server name expected in the master certificate (env DET_MASTER_CERT_NAME)')
    .option('--json', 'print JSON instead of tables (read commands; also accepted after the command)')
    .version(version(), '-v, --version', 'print the det version');
  program.hook('preAction', (_program, action) => {
    const opts = action.optsWithGlobals<{ master?: string; certFile?: string; certName?: string }>();
    // A global --json applies to the command when that command knows --json.
    if (program.opts().json && action.options.some((o) => o.long === '--json')) action.setOptionValue('json', true);
    ctx.flags = { master: opts.master, certFile: opts.certFile, certName: opts.certName };
  });
  registerMaster(program, ctx);
  registerAgent(program, ctx);
  registerSlot(program, ctx);
  registerResourcePool(program, ctx);
  registerProvisioner(program, ctx);
  registerExperiment(program, ctx);
  registerTrial(program, ctx);
  registerCheckpoint(program, ctx);
  return program;
}

/** Runs det with `argv` (without node and script); resolves to the exit code. */
export async function main(argv: string[], io: CliIO = processIO()): Promise<number> {
  const ctx = new Context(io);
  const program = buildProgram(ctx, io);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return ctx.exitCode;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    if (err instanceof UsageError) {
      ctx.err(`det: ${err.message}`);
      return EXIT.USAGE;
    }
    if (err instanceof Interrupted) {
      if (err.message) ctx.err(`det: ${err.message}`);
      return EXIT.INTERRUPTED;
    }
    ctx.err(`det: ${err instanceof DetError ? err.message : errorMessage(err)}`);
    return EXIT.FAILURE;
  } finally {
    ctx.close();
  }
}

function processIO(): CliIO {
  return {
    stdout: (text) => void process.stdout.write(text),
    stderr: (text) => void process.stderr.write(text),
    env: process.env,
    ...(process.stdin.isTTY && process.stderr.isTTY ? { confirm: askOnTerminal } : {}),
    ...(process.stderr.isTTY ? { progressStream: process.stderr } : {}),
  };
}

/** Asks on the terminal (question on stderr); only "y" or "yes" means yes; Ctrl-C is Interrupted. */
async function askOnTerminal(question: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr });
  // The terminal is in raw mode while asking: Ctrl-C arrives here, not as a signal.
  const cancel = new AbortController();
  rl.on('SIGINT', () => cancel.abort());
  try {
    return /^\s*y(es)?\s*$/i.test(await rl.question(question, { signal: cancel.signal }));
  } catch (err) {
    if (cancel.signal.aborted) {
      process.stderr.write('\n');
      throw new Interrupted();
    }
    throw err;
  } finally {
    rl.close();
  }
}

/** Entry point of bin/det.js: runs det on this process and sets process.exitCode. */
export function run(argv: string[]): void {
  // The AWS SDK (checkpoint downloads) warns on stderr about its future Node requirement; det's stderr is
  // for det's own one-line messages. Setting the variable to anything else brings the warning back.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  // `det ... | head` closes stdout early; that is not an error.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
  const controller = rootAbortController();
  main(argv, { ...processIO(), signal: controller.signal }).then(
    (code) => {
      process.exitCode = code;
    },
    (err) => {
      process.stderr.write(`det: ${errorMessage(err)}\n`);
      process.exitCode = EXIT.FAILURE;
    },
  );
}
