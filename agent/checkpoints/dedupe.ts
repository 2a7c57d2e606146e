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

/** Which files of `manifest` must be uploaded, given the content already stored. Pure. */
export function planUpload(manifest: Pick<Manifest, 'files'>, stored: StoredContent): UploadPlan {
  const plan: UploadPlan = { files: [], upload: [], skip: [], uploadBytes: 0, skippedBytes: 0 };
  const planned = new Map<string, string>();
  for (const f of manifest.files) {
    const existing = stored.get(f.sha256) ?? planned.get(f.sha256);
    if (existing !== undefined) {
      const repointed = { ...f, key: existing };
      plan.files.push(repointed);
      plan.skip.push(repointed);
      plan.skippedBytes += f.size;
    } else {
      planned.set(f.sha256, f.key);
      plan.files.push(f);
      plan.upload.push(f);
      plan.uploadBytes += f.size;
    }
  }
  return plan;
}
