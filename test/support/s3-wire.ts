// Records what an S3 client puts on the wire: one entry per attempt of every request, taken at
// the end of the middleware stack (after signing), so tests can check which commands an upload
// used and which payload hash it signed.
import type { S3Client } from '@aws-sdk/client-s3';

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

/** Starts recording the requests of `client`; the returned array fills as they are sent. */
export function recordWire(client: S3Client): WireRequest[] {
  const sent: WireRequest[] = [];
  client.middlewareStack.add(
    (next, context) => async (args) => {
      const req = args.request as { headers?: Record<string, string> };
      const headers = Object.fromEntries(Object.entries(req.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
      const signed = /SignedHeaders=([^,]*)/.exec(headers.authorization ?? '')?.[1]?.split(';') ?? [];
      sent.push({
        command: context.commandName ?? '?',
        key: (args.input as { Key?: string }).Key,
        contentSha256: headers['x-amz-content-sha256'],
        sha256Signed: signed.includes('x-amz-content-sha256'),
      });
      return next(args);
    },
    { step: 'deserialize', priority: 'low', name: 'testWireRecorder', override: true },
  );
  return sent;
}
