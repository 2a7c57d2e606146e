// Config as a pipeline: defaults -> YAML file -> DET_* environment -> flags ->
// validate everything at once (each problem names its key) -> freeze.
import * as fs from 'node:fs';
import * as YAML from 'yaml';
import type { ZodError, ZodTypeAny, output } from 'zod';
import { DetError } from '../errors';

/** A source layer: a partial config object as given (keys in snake_case, nested). */
export type ConfigLayer = Record<string, unknown>;

/**
 * Maps a DET_* variable to a dotted key path, e.g. DET_AGENT_TOKEN -> "agent_token".
 * Values are strings as given (tokens like "0123" stay intact) unless the key is
 * declared as a number or boolean.
 */
export type EnvMapping = Record<string, string | { key: string; type: 'number' | 'boolean' }>;

/** Reads a YAML config file into a layer; problems become DET_ERR_CONFIG_INVALID. */
export function readYamlFile(file: string): ConfigLayer {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new DetError('DET_ERR_CONFIG_INVALID', `cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
  const doc = YAML.parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new DetError('DET_ERR_CONFIG_INVALID', `config file ${file} is not valid YAML:\n` + doc.errors.map((e) => `  - ${e.message.split('\n')[0]}`).join('\n'));
  }
  const value = doc.toJS() ?? {};
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new DetError('DET_ERR_CONFIG_INVALID', `config file ${file} must hold a mapping of keys to values`);
  }
  return value as ConfigLayer;
}

/** Builds a layer from DET_* variables; empty variables are ignored. */
export function envLayer(env: NodeJS.ProcessEnv, mapping: EnvMapping): ConfigLayer {
  const layer: ConfigLayer = {};
  for (const [name, target] of Object.entries(mapping)) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    if (typeof target === 'string') {
      setPath(layer, target, raw);
      continue;
    }
    // A value that does not parse stays a string, so validation names the key and the bad value.
    let value: unknown = raw;
    if (target.type === 'number' && raw.trim() !== '' && Number.isFinite(Number(raw))) value = Number(raw);
    if (target.type === 'boolean' && /^(true|false)$/i.test(raw.trim())) value = raw.trim().toLowerCase() === 'true';
    setPath(layer, target.key, value);
  }
  return layer;
}

/** Sets a dotted key path in a nested object. */
export function setPath(target: ConfigLayer, keyPath: string, value: unknown): void {
  const parts = keyPath.split('.');
  let node: Record<string, unknown> = target;
  for (const part of parts.slice(0, -1)) {
    if (typeof node[part] !== 'object' || node[part] === null) node[part] = {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts[parts.length - 1]] = value;
}

/** Deep-merges layers left to right (later wins; arrays are replaced, not merged). */
export function mergeLayers(...layers: ConfigLayer[]): ConfigLayer {
  const out: ConfigLayer = {};
  for (const layer of layers) mergeInto(out, layer);
  return out;
}

function mergeInto(target: ConfigLayer, src: ConfigLayer): void {
  for (const [k, v] of Object.entries(src)) {
    if (v === undefined) continue;
    const cur = target[k];
    if (isPlainObject(v) && isPlainObject(cur)) mergeInto(cur, v);
    else target[k] = isPlainObject(v) ? mergeLayers(v) : v;
  }
}

function isPlainObject(v: unknown): v is ConfigLayer {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Every problem of a ZodError, one per line, each naming its key path. */
export function formatIssues(err: ZodError, prefix = ''): string[] {
  return err.issues.map((issue) => {
    const key = [prefix, ...issue.path.map(String)].filter(Boolean).join('.') || '(root)';
    if (issue.code === 'unrecognized_keys') {
      const base = [prefix, ...issue.path.map(String)].filter(Boolean).join('.');
      return issue.keys.map((k) => `${base ? base + '.' : ''}${k}: unknown key`).join('\n');
    }
    return `${key}: ${issue.message}`;
  });
}

/** A problem found outside the schema (e.g. between fields), with its key path. */
export interface ConfigProblem {
  path: (string | number)[];
  message: string;
}

/** Checks between fields; run on the raw input even when the schema rejects other fields. */
export type CrossCheck = (raw: Record<string, unknown>) => ConfigProblem[];

/** Problem lines from schema issues plus cross-field problems, without duplicates. */
export function collectProblems(err: ZodError | undefined, cross: ConfigProblem[]): string[] {
  const lines = err ? formatIssues(err).flatMap((l) => l.split('\n')) : [];
  for (const p of cross) lines.push(`${p.path.join('.')}: ${p.message}`);
  return [...new Set(lines)];
}

/** The one error listing every problem, e.g. "invalid master config (2 problems):\n  - port: ...". */
export function problemsError(code: 'DET_ERR_CONFIG_INVALID' | 'DET_ERR_EXPERIMENT_CONFIG_INVALID', headline: string, lines: string[]): DetError {
  return new DetError(code, `${headline} (${lines.length} problem${lines.length === 1 ? '' : 's'}):\n` + lines.map((l) => `  - ${l}`).join('\n'));
}

/** Validates the merged layers; throws one DetError listing ALL problems. Returns a frozen config. */
export function validateConfig<S extends ZodTypeAny>(schema: S, merged: ConfigLayer, what: string, cross: CrossCheck = () => []): output<S> {
  const result = schema.safeParse(merged);
  const lines = collectProblems(result.success ? undefined : result.error, cross(merged));
  if (lines.length > 0) throw problemsError('DET_ERR_CONFIG_INVALID', `invalid ${what}`, lines);
  return deepFreeze(result.data as output<S>);
}

/** `value` as a record when it is a plain object (for defensive cross checks on raw input). */
export function asRecord(value: unknown): Record<string, unknown> | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

/** Freezes an object graph. */
export function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
