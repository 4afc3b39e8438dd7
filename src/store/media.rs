//! Media storage: content-addressed files under `data_dir/media`, metadata in the `media` tree.
//!
//! ```text
//! media/blobs/<sha256>          finished content, stored once whoever uploaded it
//! media/uploads/<upload>/<i>    received chunks of an unfinished upload (their presence is the record)
//! media/thumbs/<sha256>.png     thumbnails, made once
//! media/tmp/                    every file is written here first, fsynced, then renamed into place
//! ```
//!
//! A crash can leave a stray file in `tmp/` but never a half file behind a valid id or chunk index. Every
//! method here blocks (file IO, hashing, image decoding): callers run them off the actor and HTTP threads.

use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys;
use super::{StoreError, StoreResult};
use crate::ids::UserId;

/// Largest thumbnail side.
pub const THUMB_PX: u32 = 256;
/// The bytes a proof of possession covers. Content of at most this size is never answered with a challenge
/// (its only range would be the whole file, whose sha256 the caller already sent): its bytes are asked for.
pub const PROOF_BYTES: u64 = 64 * 1024;

/// An unfinished upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Upload {
    pub id: String,
    pub owner: UserId,
    pub size: u64,
    pub sha256: String,
    pub mime: String,
    pub name: String,
    pub chunk_size: u64,
    pub created_ms: u64,
}

impl Upload {
    /// How many chunks the upload has (0 for a record with no chunk size, which the HTTP layer never makes).
    #[deny(clippy::arithmetic_side_effects)]
    pub fn chunks(&self) -> u64 {
        match (
            self.size.checked_div(self.chunk_size),
            self.size.checked_rem(self.chunk_size),
        ) {
            (Some(whole), Some(rest)) => whole.saturating_add(u64::from(rest != 0)),
            _ => 0,
        }
    }

    /// The exact length chunk `index` must have (0 for an index out of range). The index comes from the
    /// request path, so the arithmetic is checked.
    #[deny(clippy::arithmetic_side_effects)]
    pub fn chunk_len(&self, index: u64) -> u64 {
        let Some(start) = index.checked_mul(self.chunk_size) else {
            return 0;
        };
        self.size.saturating_sub(start).min(self.chunk_size)
    }
}

/// A range of a stored file that a user must hash to prove they have it (PROTOCOL.md media: content only
/// other users have stored is never answered with its id from the hash alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Challenge {
    pub offset: u64,
    pub length: u64,
}

impl Challenge {
    /// `user`'s range of content `sha256` of `size` (more than [`PROOF_BYTES`]) bytes: [`PROOF_BYTES`] long,
    /// at an offset keyed by the cluster's secret, the user and the content. Each user gets their own range
    /// (one user's answer proves nothing for another), always the same one (asking again re-rolls nothing,
    /// and no challenge is kept in memory: any node checks any answer).
    #[deny(clippy::arithmetic_side_effects)]
    pub fn for_user(secret: &str, user: &UserId, sha256: &str, size: u64) -> Challenge {
        use hmac::{Hmac, Mac};
        let length = size.min(PROOF_BYTES);
        let room = size.saturating_sub(length);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("hmac takes a key of any length"));
        for part in ["rookery proof of possession", user.as_str(), sha256] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        let digest = mac.finalize().into_bytes();
        let first: [u8; 8] = digest
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 8]);
        let offset = u64::from_be_bytes(first)
            .checked_rem(room.saturating_add(1))
            .unwrap_or(0);
        Challenge { offset, length }
    }
}

/// Stored content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Media {
    pub id: String,
    pub sha256: String,
    pub size: u64,
    pub mime: String,
    pub name: String,
}

/// What `POST /v1/uploads` resolves to.
pub enum Started {
    /// The content is already stored, and this user stored (or proved) it.
    Known(Media),
    /// The content (larger than [`PROOF_BYTES`]) is stored, but only other users have stored it: the user
    /// must prove they have it.
    KnownToOthers(Media),
    /// An upload to continue (new, or this user's unfinished one for the same content).
    Upload(Upload, Vec<u64>),
}

/// What completing an upload resolves to.
pub enum Completed {
    Stored(Media),
    Missing(Vec<u64>),
    /// The bytes do not hash to the declared sha256; the upload is discarded.
    Mismatch,
}

#[derive(Clone)]
pub struct MediaStore {
    root: PathBuf,
    tree: sled::Tree,
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn is_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

impl MediaStore {
    pub fn open(data_dir: &Path, db: &sled::Db) -> StoreResult<MediaStore> {
        let root = data_dir.join("media");
        for dir in ["blobs", "uploads", "thumbs", "tmp"] {
            fs::create_dir_all(root.join(dir)).map_err(StoreError::Io)?;
        }
        Ok(MediaStore {
            root,
            tree: db.open_tree(keys::MEDIA)?,
        })
    }

    fn blob(&self, sha: &str) -> PathBuf {
        self.root.join("blobs").join(sha)
    }
    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }
    fn tmp(&self) -> PathBuf {
        self.root.join("tmp").join(random_id())
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: Vec<u8>) -> StoreResult<Option<T>> {
        match self.tree.get(&key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| corrupt("media record")),
        }
    }

    fn put_json<T: Serialize>(&self, key: Vec<u8>, value: &T) -> StoreResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|_| corrupt("media record"))?;
        self.tree.insert(key, bytes)?;
        Ok(())
    }

    pub fn media(&self, id: &str) -> StoreResult<Option<Media>> {
        if !is_id(id) {
            return Ok(None);
        }
        self.get_json(keys::media(id))
    }

    pub fn upload(&self, id: &str) -> StoreResult<Option<Upload>> {
        if !is_id(id) {
            return Ok(None);
        }
        self.get_json(keys::upload(id))
    }

    /// The content's path, for streaming it out.
    pub fn blob_path(&self, media: &Media) -> PathBuf {
        self.blob(&media.sha256)
    }

    /// Starts (or resumes) an upload of `request.sha256` for `request.owner`, or answers with the stored
    /// content (`request.id` is ignored: a new upload gets a fresh one).
    pub fn start(&self, request: Upload) -> StoreResult<Started> {
        let sha256 = request.sha256.as_str();
        if let Some(id) = self.tree.get(keys::media_by_hash(sha256))? {
            let id = std::str::from_utf8(&id).map_err(|_| corrupt("media hash index"))?;
            if let Some(media) = self.media(id)? {
                if self.is_holder(sha256, &request.owner)? {
                    return Ok(Started::Known(media));
                }
                if media.size > PROOF_BYTES {
                    return Ok(Started::KnownToOthers(media));
                }
                // small content: its bytes are the proof (`complete` keeps the stored copy once)
            }
        }
        let pending = keys::pending_upload(request.owner.as_str(), sha256, request.size);
        if let Some(id) = self.tree.get(&pending)? {
            let id = std::str::from_utf8(&id)
                .map_err(|_| corrupt("pending upload index"))?
                .to_string();
            if let Some(upload) = self.upload(&id)? {
                let received = self.received(&upload)?;
                return Ok(Started::Upload(upload, received));
            }
        }
        let upload = Upload {
            id: random_id(),
            ..request
        };
        fs::create_dir_all(self.upload_dir(&upload.id)).map_err(StoreError::Io)?;
        self.put_json(keys::upload(&upload.id), &upload)?;
        self.tree.insert(pending, upload.id.as_bytes())?;
        Ok(Started::Upload(upload, Vec::new()))
    }

    /// Stores chunk `index` (already checked for length) durably; storing it again replaces it.
    pub fn put_chunk(&self, upload: &Upload, index: u64, bytes: &[u8]) -> StoreResult<()> {
        let tmp = self.tmp();
        write_durably(&tmp, bytes).map_err(StoreError::Io)?;
        let dir = self.upload_dir(&upload.id);
        fs::create_dir_all(&dir).map_err(StoreError::Io)?;
        fs::rename(&tmp, dir.join(index.to_string())).map_err(StoreError::Io)?;
        sync_dir(&dir).map_err(StoreError::Io)
    }

    /// The chunk indices received so far, ascending.
    pub fn received(&self, upload: &Upload) -> StoreResult<Vec<u64>> {
        let mut out = Vec::new();
        match fs::read_dir(self.upload_dir(&upload.id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StoreError::Io(e)),
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(StoreError::Io)?;
                    if let Some(i) = entry
                        .file_name()
                        .to_str()
                        .and_then(|n| n.parse::<u64>().ok())
                    {
                        if i < upload.chunks() {
                            out.push(i);
                        }
                    }
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Assembles the chunks, verifies the sha256 over the whole content and stores it once.
    pub fn complete(&self, upload: &Upload) -> StoreResult<Completed> {
        let received = self.received(upload)?;
        let missing: Vec<u64> = (0..upload.chunks())
            .filter(|i| received.binary_search(i).is_err())
            .collect();
        if !missing.is_empty() {
            return Ok(Completed::Missing(missing));
        }
        let tmp = self.tmp();
        let digest = self.assemble(upload, &tmp).map_err(StoreError::Io)?;
        if digest != upload.sha256 {
            let _ = fs::remove_file(&tmp);
            self.discard(upload)?;
            return Ok(Completed::Mismatch);
        }
        let media = match self.tree.get(keys::media_by_hash(&upload.sha256))? {
            Some(id) => {
                let _ = fs::remove_file(&tmp);
                let id = std::str::from_utf8(&id)
                    .map_err(|_| corrupt("media hash index"))?
                    .to_string();
                self.media(&id)?.ok_or_else(|| corrupt("media record"))?
            }
            None => {
                fs::rename(&tmp, self.blob(&upload.sha256)).map_err(StoreError::Io)?;
                sync_dir(&self.root.join("blobs")).map_err(StoreError::Io)?;
                let media = Media {
                    id: random_id(),
                    sha256: upload.sha256.clone(),
                    size: upload.size,
                    mime: upload.mime.clone(),
                    name: upload.name.clone(),
                };
                self.put_json(keys::media(&media.id), &media)?;
                self.tree
                    .insert(keys::media_by_hash(&media.sha256), media.id.as_bytes())?;
                media
            }
        };
        self.add_holder(&media.sha256, &upload.owner)?;
        self.discard(upload)?;
        Ok(Completed::Stored(media))
    }

    /// Has `user` stored (or proven they have) the content `sha256`?
    pub fn is_holder(&self, sha256: &str, user: &UserId) -> StoreResult<bool> {
        Ok(self
            .tree
            .contains_key(keys::media_holder(sha256, user.as_str()))?)
    }

    /// Records that `user` has the content `sha256`: their next instant upload of it needs no proof.
    pub fn add_holder(&self, sha256: &str, user: &UserId) -> StoreResult<()> {
        self.tree
            .insert(keys::media_holder(sha256, user.as_str()), &[])?;
        Ok(())
    }

    /// The sha256 (hex) of `challenge`'s range of the stored content.
    pub fn range_sha256(&self, media: &Media, challenge: Challenge) -> StoreResult<String> {
        let mut file = File::open(self.blob(&media.sha256)).map_err(StoreError::Io)?;
        file.seek(io::SeekFrom::Start(challenge.offset))
            .map_err(StoreError::Io)?;
        let mut hasher = Sha256::new();
        let copied = io::copy(
            &mut file.take(challenge.length),
            &mut HashWriter(&mut hasher),
        )
        .map_err(StoreError::Io)?;
        if copied != challenge.length {
            return Err(corrupt("media blob shorter than its record"));
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Streams the chunks in order into `dest` (one 64 KiB buffer) and returns the sha256 hex.
    fn assemble(&self, upload: &Upload, dest: &Path) -> io::Result<String> {
        let mut out = io::BufWriter::with_capacity(64 * 1024, File::create(dest)?);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let dir = self.upload_dir(&upload.id);
        for i in 0..upload.chunks() {
            let mut chunk = File::open(dir.join(i.to_string()))?;
            loop {
                let n = chunk.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(hex::encode(hasher.finalize()))
    }

    /// Forgets an upload and removes its chunks.
    pub fn discard(&self, upload: &Upload) -> StoreResult<()> {
        self.tree.remove(keys::upload(&upload.id))?;
        self.tree.remove(keys::pending_upload(
            upload.owner.as_str(),
            &upload.sha256,
            upload.size,
        ))?;
        match fs::remove_dir_all(self.upload_dir(&upload.id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io(e)),
            _ => Ok(()),
        }
    }

    /// Removes uploads started before `cutoff_ms`; returns how many.
    pub fn sweep(&self, cutoff_ms: u64) -> StoreResult<usize> {
        let mut stale = Vec::new();
        for entry in self.tree.scan_prefix(keys::upload_prefix()) {
            let (_, v) = entry?;
            if let Ok(upload) = serde_json::from_slice::<Upload>(&v) {
                if upload.created_ms < cutoff_ms {
                    stale.push(upload);
                }
            }
        }
        for upload in &stale {
            self.discard(upload)?;
        }
        Ok(stale.len())
    }

    /// The thumbnail of an image (made once, then cached): `Ok(None)` when the content is not a decodable image.
    pub fn thumbnail(&self, media: &Media) -> StoreResult<Option<PathBuf>> {
        let path = self
            .root
            .join("thumbs")
            .join(format!("{}.png", media.sha256));
        if path.exists() {
            return Ok(Some(path));
        }
        let mut reader = match image::ImageReader::open(self.blob(&media.sha256))
            .and_then(|r| r.with_guessed_format())
        {
            Ok(r) => r,
            Err(e) => return Err(StoreError::Io(e)),
        };
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(20_000);
        limits.max_image_height = Some(20_000);
        limits.max_alloc = Some(512 * 1024 * 1024);
        reader.limits(limits);
        let Ok(img) = reader.decode() else {
            return Ok(None);
        };
        let thumb = img.thumbnail(THUMB_PX, THUMB_PX);
        let tmp = self.tmp();
        thumb
            .save_with_format(&tmp, image::ImageFormat::Png)
            .map_err(|e| StoreError::Io(io::Error::other(e.to_string())))?;
        fs::rename(&tmp, &path).map_err(StoreError::Io)?;
        Ok(Some(path))
    }
}

/// Feeds what is written into a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(size: u64, chunk: u64) -> Upload {
        Upload {
            id: "0".repeat(32),
            owner: UserId::parse("a").expect("valid"),
            size,
            sha256: String::new(),
            mime: "a/b".into(),
            name: String::new(),
            chunk_size: chunk,
            created_ms: 0,
        }
    }

    #[test]
    fn chunk_arithmetic() {
        let u = upload(10, 4);
        assert_eq!(u.chunks(), 3);
        assert_eq!((u.chunk_len(0), u.chunk_len(1), u.chunk_len(2)), (4, 4, 2));
        let exact = upload(8, 4);
        assert_eq!((exact.chunks(), exact.chunk_len(1)), (2, 4));
    }

    #[test]
    fn chunk_arithmetic_never_overflows() {
        let u = upload(u64::MAX, 4);
        assert_eq!(u.chunks(), u64::MAX / 4 + 1);
        assert_eq!(u.chunk_len(u64::MAX), 0, "index * chunk_size overflows");
        assert_eq!(u.chunk_len(u64::MAX / 4), 3);
        assert_eq!(upload(10, 0).chunks(), 0);
        assert_eq!(upload(10, 4).chunk_len(3), 0, "past the end");
    }

    #[test]
    fn challenges_are_per_user_stable_and_inside_the_file() {
        let (alice, bob) = (
            UserId::parse("alice").expect("valid"),
            UserId::parse("bob").expect("valid"),
        );
        let sha = "ab".repeat(32);
        for size in [PROOF_BYTES + 1, 1 << 20, u64::MAX] {
            let c = Challenge::for_user("secret", &alice, &sha, size);
            assert_eq!(c.length, PROOF_BYTES);
            assert!(c
                .offset
                .checked_add(c.length)
                .is_some_and(|end| end <= size));
            assert_eq!(
                c,
                Challenge::for_user("secret", &alice, &sha, size),
                "stable"
            );
        }
        let size = 1 << 30;
        let a = Challenge::for_user("secret", &alice, &sha, size);
        assert_ne!(
            a,
            Challenge::for_user("secret", &bob, &sha, size),
            "per user"
        );
        assert_ne!(
            a,
            Challenge::for_user("other", &alice, &sha, size),
            "keyed by the secret"
        );
        assert!(Challenge::for_user("s", &alice, &sha, PROOF_BYTES + 1).offset <= 1);
    }

    #[test]
    fn ids_are_128_bit_hex() {
        let id = random_id();
        assert!(is_id(&id));
        assert_ne!(id, random_id());
        assert!(!is_id("../../etc/passwd"));
        assert!(!is_id(&"G".repeat(32)));
    }
}
