// A static file server on 127.0.0.1:0 (GET/HEAD of files under one directory), recording each
// request: the local bake test serves its cached apt repository with it.
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';

/** A running static server. */
export interface StaticServer {
  /** http://127.0.0.1:PORT/ */
  url: string;
  /** "METHOD /path STATUS", in order. */
  requests: string[];
  close(): Promise<void>;
}

/** Serves `root` read-only; anything outside it, or not a file, is a 404. */
export async function serveDirectory(root: string): Promise<StaticServer> {
  const base = path.resolve(root);
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    const reply = (status: number, body?: fs.ReadStream, size?: number) => {
      requests.push(`${req.method} ${req.url} ${status}`);
      res.writeHead(status, size === undefined ? {} : { 'content-length': size, 'content-type': 'application/octet-stream' });
      if (body && req.method === 'GET') body.pipe(res);
      else {
        body?.destroy();
        res.end();
      }
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405);
    let rel: string;
    try {
      rel = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    } catch {
      return reply(400);
    }
    const file = path.resolve(base, `.${rel}`);
    if (file !== base && !file.startsWith(base + path.sep)) return reply(404);
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) return reply(404);
      reply(200, fs.createReadStream(file), st.size);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
