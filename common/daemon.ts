// How det-master and det-agent turn their outcome into an exit code and output.
import { DetError, errorMessage } from './errors';

/** Exit code for an error that ended a daemon's start or run, after printing it on stderr. */
export function exitCodeFor(name: string, err: unknown): number {
  const code = (err as { code?: unknown }).code;
  if (code === 'commander.helpDisplayed' || code === 'commander.version') return 0;
  if (typeof code === 'string' && code.startsWith('commander.')) return 2; // commander printed the usage error
  if (err instanceof DetError) {
    process.stderr.write(`${name}: ${err.message}\n`);
    return 1;
  }
  process.stderr.write(`${name}: unexpected error: ${errorMessage(err)}\n${(err as Error)?.stack ?? ''}\n`);
  return 1;
}

/** Runs a daemon's main and exits the process with its code. */
export function runDaemon(name: string, main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    (err) => process.exit(exitCodeFor(name, err)),
  );
}
