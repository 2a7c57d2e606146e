// Cancellation helpers: every wait in a long-running loop takes an AbortSignal.

/** Resolves after `ms`, or rejects with the signal's reason when aborted first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(signal!));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The reason a signal was aborted, as an Error. */
export function abortReason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason ?? 'aborted'));
}

/** Whether an error came from an aborted signal. */
export function isAbortError(err: unknown, signal?: AbortSignal): boolean {
  return (signal?.aborted ?? false) || (err instanceof Error && err.name === 'AbortError');
}

/**
 * The process's root AbortController: aborted on the first SIGINT or SIGTERM.
 * A second signal exits immediately (forced shutdown).
 */
export function rootAbortController(onSignal?: (sig: NodeJS.Signals) => void): AbortController {
  const controller = new AbortController();
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (controller.signal.aborted) process.exit(130);
      onSignal?.(sig);
      controller.abort(new Error(`received ${sig}`));
    });
  }
  return controller;
}
