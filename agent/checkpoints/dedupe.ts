// Content-addressed dedupe: file content already stored (by sha256) is not uploaded again, and
// files with the same content within one checkpoint are uploaded once.
import type { Manifest, ManifestFile } from './manifest';

/** What to upload for one checkpoint. */
export interface UploadPlan {
  /** One file per content not yet stored, in manifest order (first path wins). */
  upload: ManifestFile[];
  /** Files whose content is already stored, or uploaded by an earlier entry of `upload`. */
  skip: ManifestFile[];
  uploadBytes: number;
  skippedBytes: number;
}

/** Which files of `manifest` must be uploaded, given the sha256s already stored. Pure. */
export function planUpload(manifest: Pick<Manifest, 'files'>, stored: ReadonlySet<string>): UploadPlan {
  const plan: UploadPlan = { upload: [], skip: [], uploadBytes: 0, skippedBytes: 0 };
  const planned = new Set<string>();
  for (const f of manifest.files) {
    if (stored.has(f.sha256) || planned.has(f.sha256)) {
      plan.skip.push(f);
      plan.skippedBytes += f.size;
    } else {
      planned.add(f.sha256);
      plan.upload.push(f);
      plan.uploadBytes += f.size;
    }
  }
  return plan;
}
