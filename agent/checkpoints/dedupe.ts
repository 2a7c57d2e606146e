// Content-addressed dedupe: file content already stored (by sha256) is not uploaded again, and
// files with the same content within one checkpoint are uploaded once. Every skipped file's
// manifest key is pointed at the object that already holds (or will hold) its content.
import type { Manifest, ManifestFile } from '../../common/checkpoints/manifest';

/** Content already in storage: sha256 -> the key of an object holding it. */
export type StoredContent = ReadonlyMap<string, string>;

/** What to upload for one checkpoint. */
export interface UploadPlan {
  /** Every file of the manifest, in order, with `key` set to where its content is (or will be) stored. */
  files: ManifestFile[];
  /** One file per content not yet stored, in manifest order (first path wins); each is uploaded to its own key. */
  upload: ManifestFile[];
  /** Files whose content is already stored, or uploaded by an earlier entry of `upload`. */
  skip: ManifestFile[];
  uploadBytes: number;
  skippedBytes: number;
}

/**
 * Decides file by file, as hashes become known, whether a file's content must be uploaded. The
 * decisions equal planUpload's when every file is decided after all files before it in manifest
 * order that have the same size (only those can have the same content): the uploader's pipeline
 * keeps that order per size and hashes the rest in any order.
 */
export class UploadPlanner {
  private readonly stored: StoredContent;
  private readonly planned = new Map<string, string>();

  constructor(stored: StoredContent) {
    this.stored = stored;
  }

  /** The key already holding (or about to hold) content `sha256`, if any. */
  holder(sha256: string): string | undefined {
    return this.stored.get(sha256) ?? this.planned.get(sha256);
  }

  /** `f` with its key pointed at the object holding its content; `upload` when that is `f`'s own, new object. */
  decide(f: ManifestFile): { file: ManifestFile; upload: boolean } {
    const existing = this.holder(f.sha256);
    if (existing !== undefined) return { file: { ...f, key: existing }, upload: false };
    this.planned.set(f.sha256, f.key);
    return { file: f, upload: true };
  }
}

/** Which files of `manifest` must be uploaded, given the content already stored. Pure. */
export function planUpload(manifest: Pick<Manifest, 'files'>, stored: StoredContent): UploadPlan {
  const plan: UploadPlan = { files: [], upload: [], skip: [], uploadBytes: 0, skippedBytes: 0 };
  const planner = new UploadPlanner(stored);
  for (const f of manifest.files) {
    const { file, upload } = planner.decide(f);
    plan.files.push(file);
    if (upload) {
      plan.upload.push(file);
      plan.uploadBytes += f.size;
    } else {
      plan.skip.push(file);
      plan.skippedBytes += f.size;
    }
  }
  return plan;
}
