// What a pool remembers about failed launches, as pure updates of LaunchMemory.
//
// Capacity errors are about one offering (instance type x subnet x market): the offering is
// remembered as failed for CAPACITY_RETRY_MS and the decider moves on to the next one at once.
// When every offering has failed the decider has nothing left to launch until the earliest one
// expires, which is the backoff for capacity. Limit, auth and other errors are about the account
// or the request, so trying another offering does not help: those back off exponentially with
// jitter, capped (common/backoff.ts), and the decider launches nothing before nextLaunchAtMs.
import { backoffDelay, type BackoffOptions } from '../../common/backoff';
import type { LaunchErrorKind, LaunchMemory } from './types';

/** How long an offering that failed for lack of capacity is skipped. */
export const CAPACITY_RETRY_MS = 10 * 60_000;

/** Backoff after limit/auth/other launch errors: 30 s, 60 s, ... capped at 10 min, up to 20% earlier. */
export const LAUNCH_BACKOFF: BackoffOptions = { baseMs: 30_000, maxMs: 10 * 60_000, jitter: 0.2 };

/** The offering a launch asked for (a LaunchRequest fits). */
export interface OfferingKey {
  instanceType: string;
  subnetId: string;
  spot: boolean;
}

/** A launch failure as the provider reported it (a LaunchError fits). */
export interface LaunchFailure {
  kind: LaunchErrorKind;
  code: string;
  message: string;
}

/** A pool's memory before its first launch. */
export function emptyLaunchMemory(): LaunchMemory {
  return { failedOfferings: [], consecutiveFailures: 0, nextLaunchAtMs: 0, lastError: null };
}

const sameOffering = (a: OfferingKey, b: OfferingKey) => a.instanceType === b.instanceType && a.subnetId === b.subnetId && a.spot === b.spot;

/** After a launch succeeded: no backoff any more; failed offerings still in their window stay skipped. */
export function onLaunchSuccess(memory: LaunchMemory, offering: OfferingKey, now: number): LaunchMemory {
  return {
    // The offering that just worked is evidently not out of capacity any more.
    failedOfferings: memory.failedOfferings.filter((f) => f.untilMs > now && !sameOffering(f, offering)).map((f) => ({ ...f })),
    consecutiveFailures: 0,
    nextLaunchAtMs: 0,
    lastError: memory.lastError ? { ...memory.lastError } : null,
  };
}

/**
 * After a launch failed: capacity -> skip that offering for CAPACITY_RETRY_MS and let the next one
 * be tried at once; limit/auth/other -> nextLaunchAtMs = now + backoffDelay(consecutiveFailures)
 * and consecutiveFailures + 1. `random` is injectable for tests.
 */
export function onLaunchFailure(
  memory: LaunchMemory,
  err: LaunchFailure,
  offering: OfferingKey,
  now: number,
  random: () => number = Math.random,
): LaunchMemory {
  const stillFailed = memory.failedOfferings.filter((f) => f.untilMs > now).map((f) => ({ ...f }));
  const lastError = { atMs: now, kind: err.kind, code: err.code, message: err.message, instanceType: offering.instanceType, subnetId: offering.subnetId };
  if (err.kind === 'capacity') {
    return {
      failedOfferings: [...stillFailed.filter((f) => !sameOffering(f, offering)), { instanceType: offering.instanceType, subnetId: offering.subnetId, spot: offering.spot, untilMs: now + CAPACITY_RETRY_MS }],
      consecutiveFailures: memory.consecutiveFailures,
      nextLaunchAtMs: memory.nextLaunchAtMs,
      lastError,
    };
  }
  return {
    failedOfferings: stillFailed,
    consecutiveFailures: memory.consecutiveFailures + 1,
    nextLaunchAtMs: now + backoffDelay(memory.consecutiveFailures, LAUNCH_BACKOFF, random),
    lastError,
  };
}

// EC2 error codes (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html)
// that mean "this offering has no capacity now": another type, subnet (AZ) or market may work.
// RunInstances with InstanceMarketOptions (spot) reports InsufficientInstanceCapacity,
// MaxSpotInstanceCountExceeded or SpotMaxPriceTooLow; fleets report UnfulfillableCapacity and
// the spot request status capacity-not-available. InsufficientFreeAddressesInSubnet and
// Unsupported (type not offered in that AZ) are per subnet, so falling back is right for them too.
const CAPACITY_CODES = new Set([
  'InsufficientInstanceCapacity',
  'InsufficientCapacity',
  'InsufficientHostCapacity',
  'InsufficientReservedInstanceCapacity',
  'InsufficientFreeAddressesInSubnet',
  'UnfulfillableCapacity',
  'capacity-not-available',
  'MaxSpotInstanceCountExceeded',
  'SpotMaxPriceTooLow',
  'Unsupported',
]);
// Account quotas: no offering helps until the quota is raised or instances go away.
const LIMIT_CODES = new Set(['VcpuLimitExceeded', 'InstanceLimitExceeded', 'PendingVerification']);
// Credentials or permissions: an operator has to act.
const AUTH_CODES = new Set([
  'UnauthorizedOperation',
  'AuthFailure',
  'InvalidClientTokenId',
  'Blocked',
  'OptInRequired',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'AccessDenied',
  'AccessDeniedException',
]);

/** Kind of an EC2 RunInstances error code. Throttling (RequestLimitExceeded) is retried by the SDK; if it surfaces it is 'other'. */
export function classifyEc2Error(code: string): LaunchErrorKind {
  if (CAPACITY_CODES.has(code)) return 'capacity';
  if (LIMIT_CODES.has(code)) return 'limit';
  if (AUTH_CODES.has(code)) return 'auth';
  return 'other';
}
