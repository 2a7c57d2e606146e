// Argument parsers for commander: bad values become usage errors (exit 2).
import { InvalidArgumentError } from 'commander';

/** A positive integer id (experiment, trial). */
export function parseId(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
    throw new InvalidArgumentError('expected a positive integer id.');
  }
  return Number(value);
}

/** A non-negative count (e.g. --tail). */
export function parseCount(value: string): number {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) throw new InvalidArgumentError('expected a non-negative integer.');
  return Number(value);
}
