// A bounded worker pool: runs `fn` over items with at most `limit` at once. The first failure
// aborts the signal handed to the others and stops new work; once everything in flight has
// settled (so no temp file is still being written), the pool rejects with that first failure.

/** Runs `fn` over `items`, `limit` at a time; rejects with the first error after all settle. */
export async function runBounded<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T, signal: AbortSignal) => Promise<void>,
  signal?: AbortSignal,
): Promise<void> {
  const stop = new AbortController();
  const combined = signal ? AbortSignal.any([signal, stop.signal]) : stop.signal;
  let next = 0;
  let failed = false;
  let firstError: unknown;
  const worker = async (): Promise<void> => {
    while (!failed && !combined.aborted && next < items.length) {
      const item = items[next++];
      try {
        await fn(item, combined);
      } catch (err) {
        if (!failed) {
          failed = true;
          firstError = err;
          stop.abort(err);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed) throw firstError;
  signal?.throwIfAborted();
}
