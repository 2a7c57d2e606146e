// Command-line helpers shared by the benchmarks.

/**
 * An integer flag parser bound to a usage text: `int(name, value, default, min)` returns the
 * default when the flag is absent and throws, with the usage, when it is not an integer >= min.
 */
export function intOptions(usage: string): (name: string, v: string | undefined, dflt: number, min: number) => number {
  return (name, v, dflt, min) => {
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got '${v}'\n${usage}`);
    return n;
  };
}

/** Prints the usage and exits when --help was given. */
export function exitOnHelp(help: boolean | undefined, usage: string): void {
  if (!help) return;
  process.stdout.write(usage + '\n');
  process.exit(0);
}
