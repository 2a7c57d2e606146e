// Data inputs of trials: S3 prefixes synced into an agent-side object cache and bind-mounted
// read-only into the container (see cache.ts).
export { DataCache, DEFAULT_CONCURRENCY, DEFAULT_MAX_BYTES, type DataCacheOptions, type PreparedInput } from './cache';
export { planView, type ViewPlan } from './view-plan';
export { planEviction, type CachedObject, type EvictionPlan } from './eviction';
export { cacheId } from './store';
export { formatBytes } from './progress';
