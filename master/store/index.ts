// Picks the Store backend from the master's --db value.
import { openPostgresStore } from './postgres';
import { openSqliteStore } from './sqlite';
import type { Store } from './store';

/** Whether a --db value names a PostgreSQL server rather than a SQLite file. */
export function isPostgresUrl(db: string): boolean {
  return /^postgres(ql)?:\/\//i.test(db);
}

/** Opens a PostgreSQL store for postgres:// or postgresql:// URLs, otherwise a SQLite file at that path. */
export async function openStore(db: string): Promise<Store> {
  return isPostgresUrl(db) ? openPostgresStore(db) : openSqliteStore(db);
}
