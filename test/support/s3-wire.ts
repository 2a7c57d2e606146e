// Records what an S3 client puts on the wire: one entry per attempt of every request, so tests
// can check which commands an upload used and which payload hash it signed. Two sources: the
// SDK's requests, taken at the end of its middleware stack (after signing), and the requests of
// the lean PUT path (common/storage/s3-lean-put.ts), which bypasses that stack: those come from
// its diagnostics channel (LEAN_PUT_REQUEST_CHANNEL: node's request as created, with the headers
// it sends), for the lean path of that client.
import { subscribe } from 'node:diagnostics_channel';
import type { S3Client } from '@aws-sdk/client-s3';
import { LEAN_PUT_REQUEST_CHANNEL, type LeanPutRequestMessage } from '../../common/storage/s3-lean-put';

/** One request attempt as sent. */
export interface WireRequest {
  /** e.g. 'PutObjectCommand', 'UploadPartCommand'. */
  command: string;
  /** The object key (with the storage's prefix), when the command has one. */
  key?: string;
  /** The x-amz-content-sha256 header as sent. */
  contentSha256?: string;
  /** Whether the Authorization header's SignedHeaders include x-amz-content-sha256. */
  sha256Signed: boolean;
}

function signedHeaders(authorization: string | undefined): string[] {
  return /SignedHeaders=([^,]*)/.exec(authorization ?? '')?.[1]?.split(';') ?? [];
}

/** Starts recording the requests of `client`; the returned array fills as they are sent. */
export function recordWire(client: S3Client): WireRequest[] {
  const sent: WireRequest[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const req = args.request as { headers?: Record<string, string> };
      const headers = Object.fromEntries(Object.entries(req.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
      sent.push({
        command: context.commandName ?? '?',
        key: (args.input as { Key?: string }).Key,
        contentSha256: headers['x-amz-content-sha256'],
        sha256Signed: signedHeaders(headers.authorization).includes('x-amz-content-sha256'),
      });
      return next(args);
    },
    { step: 'deserialize', priority: 'low', name: 'testWireRecorder', override: true },
  );
  subscribe(LEAN_PUT_REQUEST_CHANNEL, (message) => {
    const { client: of, request } = message as LeanPutRequestMessage;
    if (of !== client) return;
    // The lean path sends only single PutObjects: PUT /<bucket>/<key> (path style) or PUT /<key>.
    const [pathname, query] = request.path.split('?');
    const host = String(request.getHeader('host') ?? '');
    const bucketInHost = !/^[\d.]+(:\d+)?$|^\[|^localhost(:\d+)?$/.test(host) && /\.s3[.-]/.test(host);
    const segments = pathname.split('/').slice(bucketInHost ? 1 : 2);
    sent.push({
      command: request.method === 'PUT' && query === undefined ? 'PutObjectCommand' : `${request.method} ${request.path}`,
      key: segments.map(decodeURIComponent).join('/'),
      contentSha256: request.getHeader('x-amz-content-sha256') as string | undefined,
      sha256Signed: signedHeaders(request.getHeader('authorization') as string | undefined).includes('x-amz-content-sha256'),
    });
  });
  return sent;
}
