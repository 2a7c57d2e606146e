// A small structured logger: one line per event, `time level component msg key=value...`.
// Values under secret-looking keys are redacted so tokens never reach a log.

/** Log levels, most verbose first. */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Keys whose values are never printed. */
const SECRET_KEY = /(token|password|secret|credential|private_?key|authorization)/i;

/** Structured fields attached to a log line. */
export type LogFields = Record<string, unknown>;

/** Logger bound to a component name. */
export interface Logger {
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  child(component: string): Logger;
}

/** Where lines go (stderr by default; tests capture it). */
export type LogSink = (line: string) => void;

/** Creates a logger. */
export function createLogger(component: string, opts: { level?: LogLevel; sink?: LogSink } = {}): Logger {
  const min = LEVELS[opts.level ?? (process.env.DET_LOG_LEVEL as LogLevel | undefined) ?? 'info'] ?? LEVELS.info;
  const sink = opts.sink ?? ((line: string) => process.stderr.write(line + '\n'));
  const emit = (level: LogLevel, msg: string, fields?: LogFields) => {
    if (LEVELS[level] < min) return;
    sink(`${new Date().toISOString()} ${level.toUpperCase().padEnd(5)} [${component}] ${msg}${formatFields(fields)}`);
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
    child: (c) => createLogger(`${component}.${c}`, opts),
  };
}

function formatFields(fields?: LogFields): string {
  if (!fields) return '';
  let out = '';
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined) continue;
    const value = SECRET_KEY.test(k) ? '[redacted]' : redactUrl(v instanceof Error ? v.message : typeof v === 'string' ? v : JSON.stringify(redactSecrets(v)));
    out += ` ${k}=${/[\s"=]/.test(value) ? JSON.stringify(value) : value}`;
  }
  return out;
}

/** A URL with its password replaced, e.g. postgres://det:***@host/db. */
export function redactUrl(text: string): string {
  return text.replace(/(\b[a-z][a-z0-9+.-]*:\/\/[^:/@\s]*:)[^@\s]*@/gi, '$1***@');
}

/** Deep copy of a config object with secret-looking values replaced, for echoing configs. */
export function redactSecrets<T>(value: T): T {
  if (typeof value === 'string') return redactUrl(value) as T;
  if (Array.isArray(value)) return value.map((v) => redactSecrets(v)) as T;
  if (value && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = SECRET_KEY.test(k) && v ? '[redacted]' : redactSecrets(v);
    return out as T;
  }
  return value;
}
