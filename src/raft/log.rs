//! The durable Raft log of a node: one append-only file for every group the node replicates, so that one
//! fsync makes a whole round of every group's entries and hard states durable (group commit across
//! partitions, the shape of TiKV's raft-engine). The file is the only durable copy; each group serves reads
//! from an in-memory `MemStorage` rebuilt from it at start.
//!
//! Why not a sled tree: sled 0.34 keeps a page cache and rewrites pages for every insert, openraft dropped
//! its sled log store for its memory and disk use, and a Raft log is written once, read back only at start
//! and truncated from the front: an append-only file is the natural fit.
//!
//! Records are encoded in memory on the Raft driver's thread; a [`SyncJob`] writes them (on the node's
//! log writer thread) and makes them durable (on its sync thread, which syncs while the next rounds are
//! written): under the page cache's writeback (a node filling or installing hundreds of MiB) a `write`
//! can block for seconds, and a driver blocked that long answers no heartbeat, so that leaders elsewhere
//! step down. Jobs are written in the order they were made; a crash loses what no job has written yet,
//! which nothing had acknowledged. (With `durability = "os"` nothing waits for a sync, and the driver
//! writes each round's records itself.)
//!
//! Format: records of `len:u32 | crc32:u32 | payload`, big-endian; the payload is `partition:u32 | kind:u8 |
//! body`, where the body is the protobuf encoding of a `HardState`, a `ConfState`, or a list of
//! `len:u32 | Entry`. Replay stops at the first record that is short or fails its checksum (a write
//! torn by a crash: nothing after it was acknowledged; or the zeros written ahead, see
//! [`PREALLOCATE_BYTES`]) and writes from there. When the file has grown to
//! [`REWRITE_BYTES`] and at least twice what the groups still hold, it is rewritten with only the live state
//! (to a new file, written and synced by a thread of its own while the records go on to the old one;
//! the new file then takes them, and is renamed over the old one once synced: neither the driver nor a
//! round waits for a rewrite's disk writes, see [`RaftLog::maybe_rewrite`]).
//!
//! Compaction: once the node's store has durably applied a group's entries up to some index, the group
//! drops them ([`super::storage::GroupStorage::compact`]) and a `COMPACTED` record (the new starting point)
//! is written: replay drops the entries up to it and keeps those after, so a compaction costs one small
//! record whatever the group keeps. A snapshot of the partition's data received from the leader writes
//! a `SNAPSHOT_DATA` record instead, the data with its point (every entry before it is gone, the log
//! starts after it): the point is never durable without the data, so a node killed before its store has
//! installed the data durably installs it again at start ([`RaftLog::installs`]; the store's copy then
//! follows the log from the point, as after any install). Once the store has flushed the install, an
//! `INSTALLED` record (or a later compaction) lets the data go. The file is then mostly dead and the next
//! rewrite shrinks it, so it stays bounded by the groups' uncompacted tails. A rewrite needs the live
//! state encoded; after one that did not pay (the file not yet twice the live state) the next look waits
//! until the file has grown by that much again.
//!
//! A snapshot that came from a peer has its data kept in a file of its own instead ([`KeptSnapshot`],
//! in [`SNAPSHOT_DIR`]), written and synced by the thread that received it before the driver steps
//! it; the log then takes a small `SNAPSHOT_FILE` record that names the file (with its length and
//! checksum), and rewrites copy that record, not the data. Written into the log, tens of MiB of data
//! rode on one of the driver's rounds, and the rounds of every partition the node keeps waited for them
//! (the joiner's slow log writes during a 1 GiB move, bench/README.md, "Stop 39"). The file is deleted
//! once the record that lets its data go is synced (see [`SyncJob::unlink`]); at start, the files of
//! the snapshots still to install are read back (and checked), and every other file is deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::Storage;

use crate::cluster::placement::PartitionId;

/// The log file's name in the node's data directory.
pub const FILE: &str = "raft.log";
/// The directory, in the node's data directory, of the received snapshots' data ([`KeptSnapshot`]).
pub const SNAPSHOT_DIR: &str = "raft-snapshots";
/// A received snapshot's data is synced after every this many bytes of it (with `durability = "sync"`):
/// one sync at the end would leave the disk tens of MiB to write at once, and the log's own syncs
/// meanwhile wait behind them (the same measure as the store's installer, `INSTALL_FLUSH_BYTES`).
const KEEP_SYNC_BYTES: usize = 2 << 20;
/// Rewrite the file once it is this large (and mostly dead).
pub const REWRITE_BYTES: u64 = 64 << 20;
/// The file grows by this much at a time, written with zeros ahead of the records: an fsync then never has
/// to change the file's size or block map, only its data (measured: 3x the single-entry sync rate of a file
/// that grows with every append; bench/README.md).
pub const PREALLOCATE_BYTES: u64 = 8 << 20;
/// A record body this large (a received snapshot's data) is written without zeros ahead of it (see
/// [`RaftLog::preallocate`]).
const LARGE_RECORD: usize = 1 << 20;
/// A replaced log file is truncated by this much at a time ([`trim_away`]), with [`TRIM_PAUSE`] between.
const TRIM_STEP: u64 = 4 << 20;
const TRIM_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// Records that need no sync make a job of their own once this many bytes of them wait (see
/// [`RaftLog::prepare_sync`]).
const SPILL_BYTES: u64 = 1 << 20;
/// The largest record replay accepts: any length a record can have (a received snapshot's data is one
/// record); a torn or corrupt header fails the checksum or runs past the file's end.
const MAX_RECORD: u32 = u32::MAX;
/// A record's header: `len | crc32 | partition | kind` (see [`header`]).
const HEADER: usize = 13;

const HARD_STATE: u8 = 1;
const CONF_STATE: u8 = 2;
const ENTRIES: u8 = 3;
/// A snapshot point (`SnapshotMetadata`): the group's entries up to it are gone (replaced by a snapshot of
/// the partition's data installed in the store); entries follow from the next index. Written by
/// rewrites; a received snapshot writes [`SNAPSHOT_DATA`].
const SNAPSHOT: u8 = 4;
/// A received snapshot (`Snapshot`: its point and the partition's data): a [`SNAPSHOT`] point whose data
/// is installed again at start, until an [`INSTALLED`], a [`COMPACTED`] at or past it, or [`DROPPED`].
const SNAPSHOT_DATA: u8 = 8;
/// The store has durably installed the group's snapshot up to this index (`u64`, big-endian): its data
/// is no longer needed.
const INSTALLED: u8 = 9;
/// A received snapshot whose data is in a file of its own ([`KeptSnapshot`]): as [`SNAPSHOT_DATA`], but
/// the body is `name_len:u16 | name | data_len:u64 | data_crc32:u32 | Snapshot` (the `Snapshot`'s
/// metadata alone).
const SNAPSHOT_FILE: u8 = 10;
/// A compaction point (`SnapshotMetadata`): the group's entries up to it are gone, the ones after it stay.
const COMPACTED: u8 = 6;
/// The group was dropped (this node no longer keeps the partition): replay forgets it, and the node does
/// not create it again from its first configuration (a later record of the group starts it anew).
const DROPPED: u8 = 5;
/// Ends the live state, and the records kept while it was written, at the start of a rewritten file (see
/// [`RaftLog::maybe_rewrite`]): a file without it is an unfinished rewrite, and the file it was to
/// replace still holds everything.
const REWRITTEN: u8 = 7;
/// The rewritten file's name until it replaces [`FILE`].
const NEXT: &str = "raft.log.next";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "raft log record for partition {partition}: entries from {first} do not follow {last}"
    )]
    Gap {
        partition: PartitionId,
        first: u64,
        last: u64,
    },
    #[error("raft log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("raft log record: {0}")]
    Encode(#[from] protobuf::ProtobufError),
    #[error("raft storage: {0}")]
    Raft(#[from] raft::Error),
    #[error("raft log: the received snapshot in {path} {why}")]
    Kept { path: PathBuf, why: String },
}

pub type LogResult<T> = Result<T, LogError>;

/// The open log file of a node. Records are encoded into memory on the caller's thread (the Raft
/// driver); their writes to the file go in the [`SyncJob`] that makes them durable, run on other threads
/// (see the module docs): a disk that blocks writes then stalls those, not the driver.
pub struct RaftLog {
    path: PathBuf,
    /// The file records go to (a rewrite switches to another).
    file: Arc<File>,
    /// Records encoded and not yet in [`RaftLog::writes`]: they go to the file from `buffer_at`.
    buffer: Vec<u8>,
    buffer_at: u64,
    /// What the next [`SyncJob`] writes, in order, before it syncs.
    writes: Vec<Pending>,
    /// Bytes of records in the file (the zeros written ahead of them not counted), written or pending.
    len: u64,
    /// Bytes the file holds, records and zeros, written or pending.
    allocated: u64,
    /// Whether [`RaftLog::sync`] fsyncs (`durability = "sync"`) or only hands the bytes to the OS.
    fsync: bool,
    /// The size from which [`RaftLog::maybe_rewrite`] considers a rewrite.
    rewrite_bytes: u64,
    /// Do not look at rewriting before the file is this large (see the module docs).
    next_rewrite_look: u64,
    /// Records written since the last sync (a round of heartbeats writes none, and needs no fsync).
    dirty: bool,
    /// Groups dropped and not started again (kept across rewrites).
    dropped: BTreeSet<PartitionId>,
    /// Received snapshots that the store may not have installed durably yet (see [`RaftLog::installs`]).
    installs: BTreeMap<PartitionId, Install>,
    /// Files of received snapshots whose data is let go by records not synced yet: deleted once they are
    /// (see [`SyncJob::unlink`]).
    unlink: Vec<PathBuf>,
    /// A rewritten file now written to, to rename over the old one once synced.
    pending_rename: Option<PathBuf>,
    /// A rewrite whose live state a thread of its own is writing (see [`RaftLog::maybe_rewrite`]).
    rewrite: Option<Rewrite>,
    /// Whether that thread is started (`true`), or the live state is written at once (for tests that
    /// need each step at a known time).
    background: bool,
    /// Rewrites that took over since the log was opened.
    rewrites: u64,
}

/// A rewrite under way: a thread writes the live state to the new file (and syncs it), while the records
/// go on to the old one and are kept here too; once that thread is done, the next job writes them after
/// the live state, then the `REWRITTEN` record, and the file takes the records from then on.
struct Rewrite {
    next: PathBuf,
    /// The live state's encoded length: where the kept records go.
    live_len: u64,
    /// Every record encoded since the live state was taken, as it went to the old file.
    kept: Vec<Chunk>,
    /// The new file, once its live state is written and synced (or why it could not be).
    written: std::sync::mpsc::Receiver<std::io::Result<File>>,
}

impl Rewrite {
    /// Keeps a record's bytes (a snapshot's data shared, not copied).
    fn keep(&mut self, header: &[u8], parts: &[Part]) {
        self.keep_bytes(header);
        for part in parts {
            match part {
                Part::Slice(b) => self.keep_bytes(b),
                Part::Shared(b) => self.kept.push(Chunk::Shared((*b).clone())),
            }
        }
    }

    fn keep_bytes(&mut self, bytes: &[u8]) {
        match self.kept.last_mut() {
            Some(Chunk::Encoded(b)) => b.extend_from_slice(bytes),
            _ => self.kept.push(Chunk::Encoded(bytes.to_vec())),
        }
    }
}

/// A received snapshot the store may not have installed durably yet, and the file its data is kept in
/// (none: the data is in the log's own record).
#[derive(Debug)]
struct Install {
    snapshot: Snapshot,
    file: Option<KeptSnapshot>,
}

/// A received snapshot's data, written to a file of its own (in [`SNAPSHOT_DIR`]) and synced by the
/// thread that received it, before the driver steps it: the log's record then only names the file (see
/// the module docs). Made by [`KeptSnapshot::write`]; a file no record names is deleted with
/// [`KeptSnapshot::discard`] (or at the next start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptSnapshot {
    /// The file's name in [`SNAPSHOT_DIR`].
    name: String,
    path: PathBuf,
    len: u64,
    crc: u32,
    /// The snapshot's point: `(index, term)`.
    point: (u64, u64),
}

impl KeptSnapshot {
    /// Writes `snapshot`'s data (of `partition`) to a new file in `dir`'s [`SNAPSHOT_DIR`], synced (and
    /// its name) if `fsync`.
    pub fn write(
        dir: &Path,
        partition: PartitionId,
        snapshot: &Snapshot,
        fsync: bool,
    ) -> std::io::Result<KeptSnapshot> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&dir)?;
        let meta = snapshot.get_metadata();
        // unique across restarts: a file a crash left behind is never written over
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "{partition}-{}-{}-{started:x}-{n}.snap",
            meta.term, meta.index
        );
        let path = dir.join(&name);
        let data = snapshot.get_data();
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            let mut at = 0u64;
            for piece in data.chunks(KEEP_SYNC_BYTES) {
                file.write_all(piece)?;
                let end = at + piece.len() as u64;
                if fsync {
                    file.sync_data()?;
                    crate::page_cache::release(&file, at, end);
                }
                at = end;
            }
            if fsync {
                File::open(&dir)?.sync_all()?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(KeptSnapshot {
            name,
            path,
            len: data.len() as u64,
            crc: crc32fast::hash(data),
            point: (meta.index, meta.term),
        })
    }

    /// Whether this is the data of a snapshot at `meta`'s point.
    pub fn is_of(&self, meta: &SnapshotMetadata) -> bool {
        self.point == (meta.index, meta.term)
    }

    /// Deletes the file (which no record names).
    pub fn discard(self) {
        unlink(&self.path);
    }

    /// A `SNAPSHOT_FILE` record's body for this file and `snapshot`'s point.
    fn body(&self, snapshot: &Snapshot) -> LogResult<Vec<u8>> {
        let mut body = Vec::new();
        let name = self.name.as_bytes();
        body.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
        body.extend_from_slice(name);
        body.extend_from_slice(&self.len.to_be_bytes());
        body.extend_from_slice(&self.crc.to_be_bytes());
        // the snapshot without its data: the encoding's part after the data
        let (_, only_metadata) = snapshot_parts(snapshot)?;
        body.extend_from_slice(&only_metadata);
        Ok(body)
    }

    /// A `SNAPSHOT_FILE` record's body read back: the file (in `dir`) and the snapshot without its data.
    fn parse(body: &[u8], dir: &Path) -> LogResult<(KeptSnapshot, Snapshot)> {
        let corrupt = || LogError::Kept {
            path: dir.to_path_buf(),
            why: "is named by a record that cannot be read".into(),
        };
        let name_len = body
            .get(..2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_be_bytes)
            .ok_or_else(corrupt)? as usize;
        let name = body.get(2..2 + name_len).ok_or_else(corrupt)?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt())?;
        let at = 2 + name_len;
        let len = body
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(corrupt)?;
        let crc = u32_at(body, at + 8).ok_or_else(corrupt)?;
        let snapshot = Snapshot::parse_from_bytes(body.get(at + 12..).ok_or_else(corrupt)?)?;
        let meta = snapshot.get_metadata();
        let kept = KeptSnapshot {
            path: dir.join(SNAPSHOT_DIR).join(&name),
            name,
            len,
            crc,
            point: (meta.index, meta.term),
        };
        Ok((kept, snapshot))
    }

    /// The data, read back and checked.
    fn read(&self) -> LogResult<bytes::Bytes> {
        let fail = |why: String| LogError::Kept {
            path: self.path.clone(),
            why,
        };
        let data = std::fs::read(&self.path).map_err(|e| fail(format!("cannot be read: {e}")))?;
        if data.len() as u64 != self.len || crc32fast::hash(&data) != self.crc {
            return Err(fail(format!(
                "holds {} bytes that fail their checksum ({} were written)",
                data.len(),
                self.len
            )));
        }
        Ok(data.into())
    }
}

/// Deletes a received snapshot's file that nothing needs any more (already gone is fine). A large one is
/// held open across the deletion and its blocks freed in steps by [`trim_away`]: freed at once, tens of
/// MiB would hold the calling thread (the sync thread, or the driver) while the disk discards them.
fn unlink(path: &Path) {
    let held = OpenOptions::new().write(true).open(path).ok();
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "raft log: cannot delete a received snapshot's file");
            return;
        }
    }
    if let Some(file) = held.filter(|f| f.metadata().is_ok_and(|m| m.len() > TRIM_STEP)) {
        trim_away(file);
    }
}

/// Bytes for a log file at an offset, not written yet.
#[derive(Debug)]
struct Pending {
    file: Arc<File>,
    at: u64,
    bytes: Chunk,
}

/// What a [`Pending`] write holds.
#[derive(Debug)]
enum Chunk {
    Encoded(Vec<u8>),
    /// A received snapshot's data, shared with the snapshot (not copied).
    Shared(bytes::Bytes),
    /// Zeros written ahead of the records (see [`PREALLOCATE_BYTES`]), this many.
    Zeros(u64),
}

/// A part of a record's body: borrowed, or a snapshot's data whose write shares it.
enum Part<'a> {
    Slice(&'a [u8]),
    Shared(&'a bytes::Bytes),
}

impl Part<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Part::Slice(b) => b,
            Part::Shared(b) => b,
        }
    }
}

impl Pending {
    fn write(&self, zeros: &mut Vec<u8>) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match &self.bytes {
            Chunk::Encoded(b) => self.file.write_all_at(b, self.at),
            Chunk::Shared(b) => self.file.write_all_at(b, self.at),
            Chunk::Zeros(len) => {
                if zeros.is_empty() {
                    zeros.resize(1 << 20, 0);
                }
                let end = self.at.saturating_add(*len);
                let mut at = self.at;
                while at < end {
                    let n =
                        usize::try_from((end - at).min(zeros.len() as u64)).unwrap_or(zeros.len());
                    self.file.write_all_at(&zeros[..n], at)?;
                    at = at.saturating_add(n as u64);
                }
                Ok(())
            }
        }
    }
}

/// What makes the records encoded so far durable: the records' writes, the file to sync, then a
/// rewritten file to rename over the old one (see [`RaftLog::prepare_sync`]).
#[derive(Debug, Default)]
pub struct SyncJob {
    pub file: Option<Arc<File>>,
    writes: Vec<Pending>,
    pub rename: Option<(PathBuf, PathBuf)>,
    /// Received snapshots' files whose data the job's records let go (see [`SyncJob::unlink`]).
    unlink: Vec<PathBuf>,
}

impl SyncJob {
    /// Writes the records, syncs the file, then renames a rewritten one into place (and syncs the
    /// directory).
    pub fn run(&self) -> std::io::Result<()> {
        self.write()?;
        if let Some(file) = &self.file {
            file.sync_data()?;
        }
        self.rename_into_place()?;
        self.unlink();
        Ok(())
    }

    /// Deletes the files of received snapshots whose data the job's records let go (an `INSTALLED`, a
    /// compaction, a drop, a later snapshot): only once those records are durable (after the sync and
    /// the rename), or a crash would find a record naming a file that is gone.
    pub fn unlink(&self) {
        for path in &self.unlink {
            unlink(path);
        }
    }

    /// Writes the records, in the order they were encoded.
    pub fn write(&self) -> std::io::Result<()> {
        write_all(&self.writes)
    }

    /// The rename alone (its file synced already). The file it replaces is held open across it and
    /// trimmed away in steps, on a thread of its own (see `trim_away`).
    pub fn rename_into_place(&self) -> std::io::Result<()> {
        if let Some((from, to)) = &self.rename {
            let old = OpenOptions::new().write(true).open(to).ok();
            std::fs::rename(from, to)?;
            if let Some(dir) = to.parent() {
                File::open(dir)?.sync_all()?;
            }
            if let Some(old) = old {
                trim_away(old);
            }
        }
        Ok(())
    }
}

/// Frees a replaced log file's blocks (or a deleted snapshot file's, see [`unlink`]) a [`TRIM_STEP`] at a
/// time, on a thread of its own, then closes it.
///
/// Whichever thread closes an unlinked file last frees all its blocks at once. On a disk mounted with
/// `discard` (and ext4 without a journal, which discards in the closing call) that was the Raft driver,
/// dropping the last round that held the file: blocked for up to 0.4 s at a time for a file of 64 MiB
/// or more, with the disk busy discarding meanwhile (seen in the kernel stacks of a 1 GiB move;
/// bench/README.md, "Stop 35"). Truncated in steps, each discard is short and other writes and syncs
/// get the disk between them; the last close then frees nothing.
fn trim_away(file: File) {
    let trim = move || {
        let mut len = match file.metadata() {
            Ok(meta) => meta.len(),
            Err(_) => return,
        };
        while len > 0 {
            len = len.saturating_sub(TRIM_STEP);
            if let Err(e) = file.set_len(len) {
                tracing::warn!(error = %e, "raft log: cannot trim a replaced file");
                return;
            }
            std::thread::sleep(TRIM_PAUSE);
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("raft-log-trim".into())
        .spawn(trim)
    {
        // (the file is closed here, its blocks freed at once)
        tracing::warn!(error = %e, "raft log: cannot start a thread to trim a replaced file");
    }
}

/// A rewrite's thread: the live state at the start of a new file at `path`, synced if the log syncs (see
/// [`RaftLog::maybe_rewrite`]).
fn write_live(path: &Path, live: &Live, fsync: bool) -> std::io::Result<File> {
    let bytes = live
        .encode()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.write_all(&bytes)?;
    if fsync {
        file.sync_data()?;
        crate::page_cache::release(&file, 0, bytes.len() as u64);
    }
    Ok(file)
}

fn write_all(writes: &[Pending]) -> std::io::Result<()> {
    let mut zeros = Vec::new();
    for w in writes {
        w.write(&mut zeros)?;
    }
    Ok(())
}

/// What replay rebuilt: every group's storage, by partition.
pub type Groups = BTreeMap<PartitionId, MemStorage>;

impl RaftLog {
    /// Opens (or creates) the log in `dir` and rebuilds every group's storage from it.
    pub fn open(dir: &Path, fsync: bool) -> LogResult<(RaftLog, Groups)> {
        let path = dir.join(FILE);
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        finish_rewrite(dir)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut groups = Groups::new();
        let mut dropped = BTreeSet::new();
        let mut installs = BTreeMap::new();
        let (good, _) = replay(&bytes, dir, &mut groups, &mut dropped, &mut installs)?;
        keep_only_needed(dir, &mut installs)?;
        let tail = bytes.get(good..).unwrap_or_default();
        if tail.iter().any(|b| *b != 0) {
            tracing::warn!(path = %path.display(), kept = good, dropped = tail.len(), "raft log: torn tail cut");
            // zero it, so that no stale bytes follow the records written from here
            file.seek(SeekFrom::Start(good as u64)).map_err(io)?;
            file.write_all(&vec![0; tail.len()]).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let log = RaftLog {
            path: path.clone(),
            file: Arc::new(file),
            buffer: Vec::new(),
            buffer_at: good as u64,
            writes: Vec::new(),
            len: good as u64,
            allocated: bytes.len() as u64,
            fsync,
            rewrite_bytes: REWRITE_BYTES,
            next_rewrite_look: 0,
            dirty: false,
            dropped,
            installs,
            unlink: Vec::new(),
            pending_rename: None,
            rewrite: None,
            background: true,
            rewrites: 0,
        };
        Ok((log, groups))
    }

    /// Rewrites from `bytes` on instead of [`REWRITE_BYTES`].
    pub fn set_rewrite_bytes(&mut self, bytes: u64) {
        self.rewrite_bytes = bytes;
    }

    /// Whether a rewrite's live state is written by a thread of its own (the default) or at once, by
    /// [`RaftLog::maybe_rewrite`] itself (for tests: the new file then takes over with the next job).
    pub fn set_background_rewrites(&mut self, on: bool) {
        self.background = on;
    }

    /// Whether a rewrite has started and its file has not taken over yet.
    pub fn rewriting(&self) -> bool {
        self.rewrite.is_some()
    }

    /// How many rewrites took over since the log was opened.
    pub fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn append(&mut self, partition: PartitionId, entries: &[Entry]) -> LogResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut body = Vec::new();
        for e in entries {
            let bytes = e.write_to_bytes()?;
            body.extend_from_slice(&len_u32(bytes.len()).to_be_bytes());
            body.extend_from_slice(&bytes);
        }
        self.record(partition, ENTRIES, &body)
    }

    pub fn set_hard_state(&mut self, partition: PartitionId, hs: &HardState) -> LogResult<()> {
        let body = hs.write_to_bytes()?;
        self.record(partition, HARD_STATE, &body)
    }

    /// A hard state whose term and vote are unchanged (only the commit index moved): written like any
    /// record, but it does not make the next [`RaftLog::sync`] necessary (a commit index lost to a crash is
    /// learnt again from the leader; raft-rs needs term and vote durable, not commit).
    pub fn set_commit(&mut self, partition: PartitionId, hs: &HardState) -> LogResult<()> {
        let dirty = self.dirty;
        self.set_hard_state(partition, hs)?;
        self.dirty = dirty;
        Ok(())
    }

    /// Records that `partition`'s log now starts after `snapshot`'s point, with the partition's data to
    /// install (a `SNAPSHOT_DATA` record: see the module docs).
    ///
    /// The data (tens of MiB per move on the node that joins) is written from where it is, not copied
    /// into a record first: the body is the `Snapshot`'s protobuf encoding made of its parts (see
    /// `snapshot_parts`), and the sync that writes it shares the snapshot's buffer.
    pub fn set_snapshot(&mut self, partition: PartitionId, snapshot: &Snapshot) -> LogResult<()> {
        let (head, tail) = snapshot_parts(snapshot)?;
        self.record_parts(
            partition,
            SNAPSHOT_DATA,
            &[
                Part::Slice(&head),
                Part::Shared(&snapshot.data),
                Part::Slice(&tail),
            ],
        )?;
        self.set_install(
            partition,
            Install {
                snapshot: snapshot.clone(),
                file: None,
            },
        );
        Ok(())
    }

    /// [`RaftLog::set_snapshot`] for a snapshot whose data is kept in `file` already (written and synced
    /// by the thread that received it): a `SNAPSHOT_FILE` record that names the file (see the module
    /// docs). The log owns the file from now on, and deletes it once its data is let go.
    pub fn set_snapshot_file(
        &mut self,
        partition: PartitionId,
        snapshot: &Snapshot,
        file: KeptSnapshot,
    ) -> LogResult<()> {
        let body = file.body(snapshot)?;
        self.record(partition, SNAPSHOT_FILE, &body)?;
        self.set_install(
            partition,
            Install {
                snapshot: snapshot.clone(),
                file: Some(file),
            },
        );
        Ok(())
    }

    /// `partition`'s received snapshot is now `install` (an earlier one's file goes once this is synced).
    fn set_install(&mut self, partition: PartitionId, install: Install) {
        if let Some(old) = self.installs.insert(partition, install) {
            self.let_go(old);
        }
    }

    /// A received snapshot's data is no longer needed: its file goes once the records so far are synced.
    fn let_go(&mut self, install: Install) {
        if let Some(file) = install.file {
            self.unlink.push(file.path);
        }
    }

    /// The received snapshots whose installation in the store is not known to be durable: a node installs
    /// them again when it starts (before applying anything after them).
    pub fn installs(&self) -> Vec<(PartitionId, Snapshot)> {
        self.installs
            .iter()
            .map(|(p, i)| (*p, i.snapshot.clone()))
            .collect()
    }

    /// The store has durably installed `partition`'s snapshot at `index`: its data is let go (an
    /// `INSTALLED` record, which needs no sync of its own: lost, it costs one more installation; a kept
    /// file's deletion waits for it to be synced, and the next job is made for that).
    pub fn set_installed(&mut self, partition: PartitionId, index: u64) -> LogResult<()> {
        if self
            .installs
            .get(&partition)
            .is_none_or(|i| i.snapshot.get_metadata().index > index)
        {
            return Ok(());
        }
        if let Some(install) = self.installs.remove(&partition) {
            self.let_go(install);
        }
        let dirty = self.dirty;
        self.record(partition, INSTALLED, &index.to_be_bytes())?;
        self.dirty = dirty;
        Ok(())
    }

    /// Records that `partition`'s log dropped its entries up to `point` and keeps the ones after it (a
    /// `COMPACTED` record: see the module docs).
    pub fn set_compacted(
        &mut self,
        partition: PartitionId,
        point: &SnapshotMetadata,
    ) -> LogResult<()> {
        let body = point.write_to_bytes()?;
        self.record(partition, COMPACTED, &body)?;
        if let Some(install) = forget_install(&mut self.installs, partition, point.index) {
            self.let_go(install);
        }
        Ok(())
    }

    pub fn set_conf_state(&mut self, partition: PartitionId, cs: &ConfState) -> LogResult<()> {
        let body = cs.write_to_bytes()?;
        self.record(partition, CONF_STATE, &body)
    }

    /// Records that this node dropped its replica of `partition`.
    pub fn drop_group(&mut self, partition: PartitionId) -> LogResult<()> {
        self.record(partition, DROPPED, &[])?;
        self.dropped.insert(partition);
        if let Some(install) = self.installs.remove(&partition) {
            self.let_go(install);
        }
        Ok(())
    }

    /// Whether `partition`'s group was dropped (and not started again since).
    pub fn was_dropped(&self, partition: PartitionId) -> bool {
        self.dropped.contains(&partition)
    }

    /// Whether records were written since the last sync.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns what writes every record encoded so far and makes it durable (nothing if nothing was
    /// written since the last job): the caller runs it, on another thread if it likes, while records go
    /// on being encoded; jobs must run in the order they were prepared. A node that does not fsync runs
    /// the writes here (and a rewritten file is renamed at once), and gets no job.
    ///
    /// Records that need no sync (a commit index, an installation) wait for the next job that does;
    /// should more than a MiB of them pile up, or a received snapshot's file wait for its deletion (see
    /// [`SyncJob::unlink`]), that job is made now.
    pub fn prepare_sync(&mut self) -> LogResult<SyncJob> {
        self.take_over();
        let held = (self.buffer.len() as u64).saturating_add(
            self.writes
                .iter()
                .map(|w| match &w.bytes {
                    Chunk::Encoded(b) => b.len() as u64,
                    Chunk::Shared(b) => b.len() as u64,
                    Chunk::Zeros(_) => 0,
                })
                .sum(),
        );
        // files to delete make a job too: an idle node would otherwise keep tens of MiB of them until
        // its next write
        let dirty = std::mem::take(&mut self.dirty);
        if !dirty && held < SPILL_BYTES && self.unlink.is_empty() {
            return Ok(SyncJob::default());
        }
        self.take_buffer();
        let mut job = SyncJob {
            file: Some(self.file.clone()),
            writes: std::mem::take(&mut self.writes),
            rename: self
                .pending_rename
                .take()
                .map(|next| (next, self.path.clone())),
            unlink: std::mem::take(&mut self.unlink),
        };
        if !self.fsync {
            // nothing waits for the disk: the writes, the rename and the deletions are done here
            job.write()
                .and_then(|()| job.rename_into_place())
                .map_err(|source| LogError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            job.unlink();
            job = SyncJob::default();
        }
        Ok(job)
    }

    /// Moves the records encoded into the buffer to the writes.
    fn take_buffer(&mut self) {
        if !self.buffer.is_empty() {
            self.writes.push(Pending {
                file: self.file.clone(),
                at: self.buffer_at,
                bytes: Chunk::Encoded(std::mem::take(&mut self.buffer)),
            });
        }
        self.buffer_at = self.len;
    }

    /// Makes every record written so far durable: one fsync for all groups (none if nothing was written).
    pub fn sync(&mut self) -> LogResult<()> {
        let job = self.prepare_sync()?;
        job.run().map_err(|source| LogError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Rewrites the file with only what `groups` still hold, when it has grown large and mostly dead,
    /// without stopping the records: a thread of its own writes the live state to a new file
    /// (`raft.log.next`) and syncs it, while the records go on to the old file and are kept in memory
    /// too. The first job prepared once that thread is done writes the kept records after the live state,
    /// then a `REWRITTEN` record; the new file takes every record from then on, and is renamed over the
    /// old one once that job has synced it (see [`RaftLog::prepare_sync`]).
    ///
    /// A crash before then finds either a new file with its `REWRITTEN` record, which holds everything
    /// and is renamed at start, or one without, which held nothing acknowledged (the old file has every
    /// record synced so far) and is deleted.
    ///
    /// Before, the live state went to the disk with a round's job, and every round of the node waited
    /// for it: 0.3 to 0.6 s of 16 to 32 MiB about once a minute under a steady load, and up to a second
    /// after a large fill (bench/README.md, "Stop 36").
    pub fn maybe_rewrite(&mut self, groups: &Groups) -> LogResult<bool> {
        if self.len < self.rewrite_bytes.max(self.next_rewrite_look) {
            return Ok(false);
        }
        let next = self.path.with_file_name(NEXT);
        if self.rewrite.is_some() || self.pending_rename.is_some() || next.exists() {
            // the last rewrite is not in place yet
            return Ok(false);
        }
        let live = Live::capture(groups, &self.dropped, &self.installs)?;
        let live_len = live.len();
        if live_len.saturating_mul(2) > self.len {
            self.next_rewrite_look = self.len.saturating_add(live_len);
            return Ok(false);
        }
        let (done, written) = std::sync::mpsc::channel();
        let (path, fsync) = (next.clone(), self.fsync);
        let write = move || {
            let _ = done.send(write_live(&path, &live, fsync));
        };
        if self.background {
            std::thread::Builder::new()
                .name("raft-log-rewrite".into())
                .spawn(write)
                .map_err(|source| LogError::Io {
                    path: next.clone(),
                    source,
                })?;
        } else {
            write();
        }
        self.rewrite = Some(Rewrite {
            next,
            live_len,
            kept: Vec::new(),
            written,
        });
        Ok(true)
    }

    /// Once the rewrite's thread is done: the kept records and the `REWRITTEN` record go to the new
    /// file after the live state (with this job), and the file takes the records from then on (see
    /// [`RaftLog::maybe_rewrite`]). A rewrite that failed is given up: the old file goes on.
    fn take_over(&mut self) {
        let Some(rewrite) = &self.rewrite else {
            return;
        };
        let file = match rewrite.written.try_recv() {
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Ok(Ok(file)) => Ok(file),
            Ok(Err(e)) => Err(e),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                Err(std::io::Error::other("the rewrite's thread ended"))
            }
        };
        let Some(rewrite) = self.rewrite.take() else {
            return;
        };
        let file = match file {
            Ok(file) => Arc::new(file),
            Err(e) => {
                tracing::warn!(path = %rewrite.next.display(), error = %e, "raft log: a rewrite failed; the old file goes on");
                let _ = std::fs::remove_file(&rewrite.next);
                self.next_rewrite_look = self.len.saturating_add(rewrite.live_len);
                return;
            }
        };
        // what the old file still buffers goes there with this job (unsynced: the new file has it too)
        self.take_buffer();
        let mut at = rewrite.live_len;
        for chunk in rewrite.kept {
            let len = match &chunk {
                Chunk::Encoded(b) => b.len() as u64,
                Chunk::Shared(b) => b.len() as u64,
                Chunk::Zeros(n) => *n,
            };
            self.writes.push(Pending {
                file: file.clone(),
                at,
                bytes: chunk,
            });
            at = at.saturating_add(len);
        }
        self.file = file;
        self.len = at;
        self.buffer_at = at;
        self.allocated = at;
        // (not through `record`: partition 0 is no group's drop or start)
        let marker = header(0, REWRITTEN, std::iter::empty());
        self.buffer.extend_from_slice(&marker);
        self.len = self.len.saturating_add(marker.len() as u64);
        self.allocated = self.len;
        self.dirty = true;
        self.next_rewrite_look = self.len.saturating_mul(2);
        self.pending_rename = Some(rewrite.next);
        self.rewrites += 1;
    }

    fn record(&mut self, partition: PartitionId, kind: u8, body: &[u8]) -> LogResult<()> {
        self.record_parts(partition, kind, &[Part::Slice(body)])
    }

    /// Encodes a record whose body is `parts` one after the other (the same bytes as [`frame`] of their
    /// concatenation); a snapshot's data is not copied, its write shares it.
    fn record_parts(&mut self, partition: PartitionId, kind: u8, parts: &[Part]) -> LogResult<()> {
        if kind != DROPPED {
            self.dropped.remove(&partition);
        }
        let body: usize = parts.iter().map(|p| p.bytes().len()).sum();
        let header = header(partition, kind, parts.iter().map(Part::bytes));
        let end = self
            .len
            .saturating_add(header.len() as u64)
            .saturating_add(body as u64);
        if end > self.allocated {
            self.preallocate(end, body >= LARGE_RECORD);
        }
        if let Some(rewrite) = &mut self.rewrite {
            rewrite.keep(&header, parts);
        }
        self.buffer.extend_from_slice(&header);
        for part in parts {
            match part {
                Part::Slice(b) => self.buffer.extend_from_slice(b),
                Part::Shared(b) => {
                    let at = self.buffer_at.saturating_add(self.buffer.len() as u64);
                    self.take_buffer();
                    self.writes.push(Pending {
                        file: self.file.clone(),
                        at,
                        bytes: Chunk::Shared((*b).clone()),
                    });
                    self.buffer_at = at.saturating_add(b.len() as u64);
                }
            }
        }
        self.len = end;
        self.dirty = true;
        Ok(())
    }

    /// Writes zeros (with the next job) from the end of the file to past `end` (at least
    /// [`PREALLOCATE_BYTES`] more); the records go on where they stopped. The next sync makes the new size
    /// durable with the records (once per [`PREALLOCATE_BYTES`]). For a `large` record (a snapshot's data)
    /// the file just grows by the record: zeros written ahead of it would be written over at once.
    fn preallocate(&mut self, end: u64, large: bool) {
        if large {
            self.allocated = end;
            return;
        }
        let target = end.max(self.allocated.saturating_add(PREALLOCATE_BYTES));
        self.writes.push(Pending {
            file: self.file.clone(),
            at: self.allocated,
            bytes: Chunk::Zeros(target - self.allocated),
        });
        self.allocated = target;
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A `Snapshot`'s protobuf encoding in three parts, its data between them: the data field's tag and
/// length, then the metadata field (protobuf writes fields in number order: `data` is 1, `metadata` 2).
/// Also how a snapshot goes on the wire without a copy of its data (`wire::encode_snapshot`).
pub(crate) fn snapshot_parts(snapshot: &Snapshot) -> LogResult<(Vec<u8>, Vec<u8>)> {
    let mut head = Vec::new();
    if !snapshot.get_data().is_empty() {
        let mut os = protobuf::CodedOutputStream::vec(&mut head);
        os.write_tag(1, protobuf::wire_format::WireTypeLengthDelimited)?;
        os.write_raw_varint64(snapshot.get_data().len() as u64)?;
        os.flush()?;
    }
    let mut only_metadata = Snapshot::default();
    if snapshot.has_metadata() {
        only_metadata.set_metadata(snapshot.get_metadata().clone());
    }
    Ok((head, only_metadata.write_to_bytes()?))
}

/// A record's header for a body made of `parts`: `len | crc32 | partition | kind` (see the module docs).
fn header<'a>(
    partition: PartitionId,
    kind: u8,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> [u8; HEADER] {
    let mut body = 0usize;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&partition.to_be_bytes());
    crc.update(&[kind]);
    for part in parts {
        body = body.saturating_add(part.len());
        crc.update(part);
    }
    let mut out = [0u8; HEADER];
    out[..4].copy_from_slice(&len_u32(5 + body).to_be_bytes());
    out[4..8].copy_from_slice(&crc.finalize().to_be_bytes());
    out[8..12].copy_from_slice(&partition.to_be_bytes());
    out[12] = kind;
    out
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// Applies every whole record of `bytes` to `groups`; the length of the good prefix, and whether it has a
/// `REWRITTEN` record.
///
/// A `SNAPSHOT_FILE` record's data is not read here (most are let go by a later record): see
/// [`keep_only_needed`].
fn replay(
    bytes: &[u8],
    dir: &Path,
    groups: &mut Groups,
    dropped: &mut BTreeSet<PartitionId>,
    installs: &mut BTreeMap<PartitionId, Install>,
) -> LogResult<(usize, bool)> {
    let mut at = 0usize;
    let mut rewritten = false;
    loop {
        let (Some(len), Some(crc)) = (u32_at(bytes, at), u32_at(bytes, at.saturating_add(4)))
        else {
            return Ok((at, rewritten));
        };
        if !(5..=MAX_RECORD).contains(&len) {
            return Ok((at, rewritten));
        }
        let start = at.saturating_add(8);
        let Some(payload) = start
            .checked_add(len as usize)
            .and_then(|end| bytes.get(start..end))
        else {
            return Ok((at, rewritten));
        };
        if crc32fast::hash(payload) != crc {
            return Ok((at, rewritten));
        }
        let Some(partition) = u32_at(payload, 0) else {
            return Ok((at, rewritten));
        };
        if payload[4] == REWRITTEN {
            rewritten = true;
        } else if payload[4] == DROPPED {
            groups.remove(&partition);
            dropped.insert(partition);
            installs.remove(&partition);
        } else {
            dropped.remove(&partition);
            let storage = groups.entry(partition).or_default();
            let (kind, body) = (payload[4], &payload[5..]);
            match kind {
                SNAPSHOT_DATA => {
                    let snapshot = Snapshot::parse_from_bytes(body)?;
                    apply_point(storage, snapshot.get_metadata().clone())?;
                    let file = None;
                    installs.insert(partition, Install { snapshot, file });
                }
                SNAPSHOT_FILE => {
                    let (file, snapshot) = KeptSnapshot::parse(body, dir)?;
                    apply_point(storage, snapshot.get_metadata().clone())?;
                    let file = Some(file);
                    installs.insert(partition, Install { snapshot, file });
                }
                INSTALLED | COMPACTED | SNAPSHOT => {
                    let index = if kind == INSTALLED {
                        body.try_into().map(u64::from_be_bytes).unwrap_or(0)
                    } else {
                        SnapshotMetadata::parse_from_bytes(body)?.index
                    };
                    forget_install(installs, partition, index);
                    apply(partition, storage, kind, body)?;
                }
                _ => apply(partition, storage, kind, body)?,
            }
        }
        at = start + payload.len();
    }
}

/// Puts a rewrite that a crash interrupted in place, or deletes it if it was not finished (see
/// [`RaftLog::maybe_rewrite`]).
fn finish_rewrite(dir: &Path) -> LogResult<()> {
    let next = dir.join(NEXT);
    let io = |source| LogError::Io {
        path: next.clone(),
        source,
    };
    let bytes = match std::fs::read(&next) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let (_, complete) = replay(
        &bytes,
        dir,
        &mut Groups::new(),
        &mut BTreeSet::new(),
        &mut BTreeMap::new(),
    )?;
    if complete {
        tracing::warn!(path = %next.display(), "raft log: finishing a rewrite cut short");
        SyncJob {
            rename: Some((next.clone(), dir.join(FILE))),
            ..SyncJob::default()
        }
        .rename_into_place()
        .map_err(io)?;
    } else {
        std::fs::remove_file(&next).map_err(io)?;
    }
    Ok(())
}

/// Applies one record to a group's storage.
fn apply(partition: PartitionId, storage: &MemStorage, kind: u8, body: &[u8]) -> LogResult<()> {
    let mut core = storage.wl();
    match kind {
        HARD_STATE => core.set_hardstate(HardState::parse_from_bytes(body)?),
        CONF_STATE => core.set_conf_state(ConfState::parse_from_bytes(body)?),
        SNAPSHOT => {
            drop(core);
            apply_point(storage, SnapshotMetadata::parse_from_bytes(body)?)?;
        }
        COMPACTED => {
            drop(core);
            let point = SnapshotMetadata::parse_from_bytes(body)?;
            let (first, last) = (storage.first_index()?, storage.last_index()?);
            if point.index >= first && point.index <= last {
                let state = storage.initial_state()?;
                let kept = if point.index < last {
                    storage.entries(
                        point.index + 1,
                        last + 1,
                        None,
                        raft::GetEntriesContext::empty(false),
                    )?
                } else {
                    Vec::new()
                };
                let mut core = storage.wl();
                core.apply_snapshot(Snapshot {
                    metadata: Some(point).into(),
                    ..Default::default()
                })?;
                core.set_hardstate(state.hard_state);
                core.append(&kept)?;
            }
        }
        ENTRIES => {
            let mut entries = Vec::new();
            let mut at = 0usize;
            while let Some(len) = u32_at(body, at) {
                let start = at.saturating_add(4);
                let Some(bytes) = start
                    .checked_add(len as usize)
                    .and_then(|end| body.get(start..end))
                else {
                    break;
                };
                entries.push(Entry::parse_from_bytes(bytes)?);
                at = start + bytes.len();
            }
            drop(core);
            let (first, last) = (storage.first_index()?, storage.last_index()?);
            if let Some(e) = entries.first() {
                // a new leader's entries replace a conflicting tail, as they did when first written
                if e.index < first || e.index > last.saturating_add(1) {
                    return Err(LogError::Gap {
                        partition,
                        first: e.index,
                        last,
                    });
                }
            }
            storage.wl().append(&entries)?;
        }
        _ => {}
    }
    Ok(())
}

/// A snapshot point: the group's log starts after it (unless it already starts later).
fn apply_point(storage: &MemStorage, point: SnapshotMetadata) -> LogResult<()> {
    // the hard state recorded after it restores the commit index the point may lower
    if point.index >= storage.first_index()?.saturating_sub(1) {
        storage.wl().apply_snapshot(Snapshot {
            metadata: Some(point).into(),
            ..Default::default()
        })?;
    }
    Ok(())
}

/// A point at `index` (installed, compacted, replaced) makes a received snapshot at or before it
/// unneeded: returned, removed.
fn forget_install(
    installs: &mut BTreeMap<PartitionId, Install>,
    partition: PartitionId,
    index: u64,
) -> Option<Install> {
    if installs
        .get(&partition)
        .is_some_and(|i| i.snapshot.get_metadata().index <= index)
    {
        return installs.remove(&partition);
    }
    None
}

/// At start, after replay: reads back the data of the received snapshots still to install from their
/// files, and deletes every file in [`SNAPSHOT_DIR`] that none of them names (let go by a record whose
/// deletion a crash cut short, or written by a receiving thread for a snapshot the log never took).
fn keep_only_needed(dir: &Path, installs: &mut BTreeMap<PartitionId, Install>) -> LogResult<()> {
    let mut needed = BTreeSet::new();
    for install in installs.values_mut() {
        if let Some(file) = &install.file {
            install.snapshot.data = file.read()?;
            needed.insert(file.name.clone());
        }
    }
    let kept = dir.join(SNAPSHOT_DIR);
    let entries = match std::fs::read_dir(&kept) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(LogError::Io { path: kept, source }),
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|name| needed.contains(name))
        {
            unlink(&entry.path());
        }
    }
    Ok(())
}

/// Every group's live state as records (a received snapshot not yet installed durably with its data).
#[cfg(test)]
fn encode_live(
    groups: &Groups,
    dropped: &BTreeSet<PartitionId>,
    installs: &BTreeMap<PartitionId, Install>,
) -> LogResult<Vec<u8>> {
    Live::capture(groups, dropped, installs)?.encode()
}

/// Every group's live state, taken on the driver's thread without encoding it (entries share their
/// data), with its exact encoded length (where the records kept meanwhile go): a rewrite's own thread
/// encodes and writes it (see [`RaftLog::maybe_rewrite`]). Encoding it on the driver took it 0.7 to 0.9 s
/// per rewrite at 64 MiB of data, during which the node answered no heartbeat.
#[derive(Debug)]
pub struct Live {
    records: Vec<(PartitionId, LiveRecord)>,
    /// The encoded length, in bytes.
    len: u64,
}

#[derive(Debug)]
enum LiveRecord {
    Dropped,
    Conf(ConfState),
    Point(SnapshotMetadata),
    Install(Snapshot),
    /// A received snapshot whose data is in a file: the record's body, encoded at capture (it is small).
    InstallFile(Vec<u8>),
    Entries(Vec<Entry>),
    Hard(HardState),
}

impl LiveRecord {
    fn kind(&self) -> u8 {
        match self {
            LiveRecord::Dropped => DROPPED,
            LiveRecord::Conf(_) => CONF_STATE,
            LiveRecord::Point(_) => SNAPSHOT,
            LiveRecord::Install(_) => SNAPSHOT_DATA,
            LiveRecord::InstallFile(_) => SNAPSHOT_FILE,
            LiveRecord::Entries(_) => ENTRIES,
            LiveRecord::Hard(_) => HARD_STATE,
        }
    }

    /// The body's length once encoded.
    fn body_len(&self) -> u64 {
        match self {
            LiveRecord::Dropped => 0,
            LiveRecord::Conf(c) => u64::from(c.compute_size()),
            LiveRecord::Point(p) => u64::from(p.compute_size()),
            LiveRecord::Install(s) => u64::from(s.compute_size()),
            LiveRecord::InstallFile(body) => body.len() as u64,
            LiveRecord::Entries(entries) => entries
                .iter()
                .map(|e| 4 + u64::from(e.compute_size()))
                .sum(),
            LiveRecord::Hard(h) => u64::from(h.compute_size()),
        }
    }

    /// Appends the body, encoded, to `out`.
    fn write_body(&self, out: &mut Vec<u8>) -> LogResult<()> {
        match self {
            LiveRecord::Dropped => {}
            LiveRecord::Conf(c) => c.write_to_vec(out)?,
            LiveRecord::Point(p) => p.write_to_vec(out)?,
            LiveRecord::Install(s) => s.write_to_vec(out)?,
            LiveRecord::InstallFile(body) => out.extend_from_slice(body),
            LiveRecord::Entries(entries) => {
                for e in entries {
                    let at = out.len();
                    out.extend_from_slice(&[0; 4]);
                    e.write_to_vec(out)?;
                    let len = len_u32(out.len() - at - 4).to_be_bytes();
                    out[at..at + 4].copy_from_slice(&len);
                }
            }
            LiveRecord::Hard(h) => h.write_to_vec(out)?,
        }
        Ok(())
    }
}

impl Live {
    /// The records that rebuild `groups` (and remember `dropped`); a rewrite ends them with a
    /// `REWRITTEN` record once the records kept meanwhile follow them.
    fn capture(
        groups: &Groups,
        dropped: &BTreeSet<PartitionId>,
        installs: &BTreeMap<PartitionId, Install>,
    ) -> LogResult<Live> {
        let mut records = Vec::new();
        for &partition in dropped {
            records.push((partition, LiveRecord::Dropped));
        }
        for (&partition, storage) in groups {
            let state = storage.initial_state()?;
            records.push((partition, LiveRecord::Conf(state.conf_state.clone())));
            let first = storage.first_index()?;
            let last = storage.last_index()?;
            if first > 1 {
                match installs
                    .get(&partition)
                    .filter(|i| i.snapshot.get_metadata().index == first - 1)
                {
                    Some(Install {
                        snapshot,
                        file: Some(file),
                    }) => {
                        let body = file.body(snapshot)?;
                        records.push((partition, LiveRecord::InstallFile(body)));
                    }
                    Some(Install {
                        snapshot,
                        file: None,
                    }) => {
                        records.push((partition, LiveRecord::Install(snapshot.clone())));
                    }
                    None => {
                        let point = SnapshotMetadata {
                            index: first - 1,
                            term: storage.term(first - 1)?,
                            conf_state: Some(state.conf_state.clone()).into(),
                            ..Default::default()
                        };
                        records.push((partition, LiveRecord::Point(point)));
                    }
                }
            }
            if last >= first {
                let entries = storage.entries(
                    first,
                    last + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )?;
                records.push((partition, LiveRecord::Entries(entries)));
            }
            records.push((partition, LiveRecord::Hard(state.hard_state)));
        }
        let len = records
            .iter()
            .map(|(_, r)| HEADER as u64 + r.body_len())
            .sum();
        Ok(Live { records, len })
    }

    /// The encoded length, in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The records, encoded.
    pub fn encode(&self) -> LogResult<Vec<u8>> {
        // each record's body is encoded in place, after room for its header (which covers the body)
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        for (partition, record) in &self.records {
            let start = out.len();
            out.extend_from_slice(&[0; HEADER]);
            record.write_body(&mut out)?;
            let header = header(*partition, record.kind(), [&out[start + HEADER..]]);
            out[start..start + HEADER].copy_from_slice(&header);
        }
        if out.len() as u64 != self.len {
            return Err(LogError::Io {
                path: PathBuf::new(),
                source: std::io::Error::other(format!(
                    "the live state encoded to {} bytes, {} were reserved",
                    out.len(),
                    self.len
                )),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry {
            index,
            term,
            data: data.as_bytes().to_vec().into(),
            ..Entry::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            ..HardState::default()
        }
    }

    fn datas(storage: &MemStorage) -> Vec<(u64, u64, String)> {
        let (first, last) = (
            storage.first_index().expect("first"),
            storage.last_index().expect("last"),
        );
        if last < first {
            return Vec::new();
        }
        storage
            .entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
            .expect("entries")
            .into_iter()
            .map(|e| {
                (
                    e.index,
                    e.term,
                    String::from_utf8_lossy(&e.data).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_file_replaced_by_a_rewrite_is_emptied_while_another_thread_still_holds_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (old, next) = (dir.path().join(FILE), dir.path().join(NEXT));
        let len = usize::try_from(2 * TRIM_STEP + 5).expect("len");
        std::fs::write(&old, vec![7u8; len]).expect("old");
        std::fs::write(&next, b"rewritten").expect("next");
        // what the driver's last round still holds of the old file
        let held = File::open(&old).expect("held");
        SyncJob {
            rename: Some((next.clone(), old.clone())),
            ..SyncJob::default()
        }
        .rename_into_place()
        .expect("rename");
        assert_eq!(std::fs::read(&old).expect("new"), b"rewritten");
        assert!(!next.exists());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while held.metadata().expect("metadata").len() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the replaced file still holds {} bytes",
                held.metadata().expect("metadata").len()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn records_reach_the_file_with_their_job_in_order_across_preallocations_and_rewrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = RaftLog::open(dir.path(), true).expect("open");
        log.set_rewrite_bytes(4 << 20);
        log.set_background_rewrites(false);
        let big = "x".repeat(64 << 10);
        // partition 2 takes large entries (dropped later), partition 1 small ones (kept)
        let append = |log: &mut RaftLog, from: u64, to: u64| {
            for i in from..=to {
                log.append(2, &[entry(i, 1, &format!("{i}{big}"))])
                    .expect("append");
            }
        };
        let last = |dir: &Path, p: PartitionId| -> u64 {
            let (_, groups) = RaftLog::open(dir, true).expect("reopen");
            groups.get(&p).map_or(0, |g| g.last_index().expect("last"))
        };
        // encoded, not written: the file has nothing until the job runs (a crash loses only this)
        append(&mut log, 1, 10);
        let first = log.prepare_sync().expect("prepare");
        assert_eq!(last(dir.path(), 2), 0);
        // past the first preallocation: its zeros are queued before the records that land in them
        append(&mut log, 11, 160);
        let second = log.prepare_sync().expect("prepare");
        assert!(log.allocated > PREALLOCATE_BYTES);
        first.run().expect("run");
        assert_eq!(last(dir.path(), 2), 10);
        second.run().expect("run");
        assert_eq!(last(dir.path(), 2), 160);
        // a rewrite: the old file's last records, and the new file's (the ones since the live state was
        // taken, then the REWRITTEN record), go with the next job
        log.append(1, &[entry(1, 1, "a")]).expect("append");
        log.drop_group(2).expect("drop");
        let mut groups = Groups::new();
        groups
            .entry(1)
            .or_default()
            .wl()
            .append(&[entry(1, 1, "a")])
            .expect("mem");
        assert!(log.maybe_rewrite(&groups).expect("rewrite"));
        log.append(1, &[entry(2, 1, "b")]).expect("append");
        // (no open meanwhile: it would finish or drop the rewrite)
        let third = log.prepare_sync().expect("prepare");
        third.run().expect("run");
        assert!(!dir.path().join(NEXT).exists());
        let (_, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert!(!replayed.contains_key(&2));
        assert_eq!(
            datas(&replayed[&1]),
            vec![(1, 1, "a".into()), (2, 1, "b".into())]
        );
        assert!(log.len() < 4096, "rewritten: {} bytes", log.len());
    }

    #[test]
    fn records_replay_after_reopen_with_conflicting_tails_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, groups) = RaftLog::open(dir.path(), true).expect("open");
            assert!(groups.is_empty() && log.is_empty());
            log.set_conf_state(7, &ConfState::from((vec![1, 2, 3], vec![])))
                .expect("conf");
            log.append(7, &[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")])
                .expect("append");
            log.append(9, &[entry(1, 2, "x")]).expect("append");
            // a new leader of term 2 overwrote entry 3 and went on
            log.append(7, &[entry(3, 2, "C"), entry(4, 2, "d")])
                .expect("append");
            log.set_hard_state(7, &hs(2, 3)).expect("hs");
            log.sync().expect("sync");
        }
        let (_, groups) = RaftLog::open(dir.path(), true).expect("reopen");
        let g7 = &groups[&7];
        assert_eq!(
            datas(g7),
            vec![
                (1, 1, "a".into()),
                (2, 1, "b".into()),
                (3, 2, "C".into()),
                (4, 2, "d".into())
            ]
        );
        let state = g7.initial_state().expect("state");
        assert_eq!((state.hard_state.term, state.hard_state.commit), (2, 3));
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(datas(&groups[&9]), vec![(1, 2, "x".into())]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_what_came_before_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (whole, second) = {
            let (mut log, _) = RaftLog::open(dir.path(), true).expect("open");
            log.append(1, &[entry(1, 1, "kept")]).expect("append");
            log.sync().expect("sync");
            let whole = log.len();
            log.append(1, &[entry(2, 1, "torn")]).expect("append");
            log.sync().expect("sync");
            (whole, log.len())
        };
        let path = dir.path().join(FILE);
        let pristine = std::fs::read(&path).expect("read");
        assert!(pristine.len() as u64 >= PREALLOCATE_BYTES, "written ahead");
        // a crash that kept only part of the second record (the rest still the zeros written ahead), or kept
        // it with a flipped bit: only the first survives, and the next record goes where the second began
        let mut flipped = pristine.clone();
        flipped[usize::try_from(second - 1).expect("small")] ^= 0x40;
        let mut torn: Vec<Vec<u8>> = [whole + 1, whole + 7, second - 1]
            .into_iter()
            .map(|cut| {
                let mut bytes = pristine.clone();
                let (from, to) = (
                    usize::try_from(cut).expect("small"),
                    usize::try_from(second).expect("small"),
                );
                bytes[from..to].fill(0);
                bytes
            })
            .collect();
        torn.push(flipped);
        for (i, bytes) in torn.into_iter().enumerate() {
            std::fs::write(&path, &bytes).expect("write");
            let (mut log, groups) = RaftLog::open(dir.path(), true).expect("reopen");
            assert_eq!(datas(&groups[&1]), vec![(1, 1, "kept".into())], "case {i}");
            assert_eq!(log.len(), whole);
            log.append(1, &[entry(2, 1, "again")]).expect("append");
            log.sync().expect("sync");
            drop(log);
            let (_, groups) = RaftLog::open(dir.path(), true).expect("reopen");
            assert_eq!(
                datas(&groups[&1]),
                vec![(1, 1, "kept".into()), (2, 1, "again".into())],
                "case {i}"
            );
        }
    }

    #[test]
    fn a_dropped_group_stays_dropped_across_reopen_and_rewrite_until_started_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = RaftLog::open(dir.path(), true).expect("open");
        log.set_rewrite_bytes(1024);
        log.append(1, &[entry(1, 1, "a")]).expect("append");
        log.append(2, &[entry(1, 1, "b")]).expect("append");
        log.drop_group(2).expect("drop");
        log.sync().expect("sync");
        drop(log);
        let (mut log, groups) = RaftLog::open(dir.path(), true).expect("reopen");
        assert!(groups.contains_key(&1));
        assert!(!groups.contains_key(&2), "replay forgets a dropped group");
        assert!(log.was_dropped(2) && !log.was_dropped(1));
        log.set_rewrite_bytes(1024);
        log.set_background_rewrites(false);
        for commit in 0..100 {
            log.set_hard_state(1, &hs(1, commit % 2)).expect("hs");
        }
        let before = log.len();
        assert!(log.maybe_rewrite(&groups).expect("rewrite"), "{before}");
        log.sync().expect("sync");
        assert!(log.len() < before, "rewritten");
        drop(log);
        let (mut log, groups) = RaftLog::open(dir.path(), true).expect("reopen");
        assert!(log.was_dropped(2), "the rewrite kept the drop");
        assert!(!groups.contains_key(&2));
        log.set_conf_state(2, &ConfState::default())
            .expect("start again");
        assert!(!log.was_dropped(2));
        log.sync().expect("sync");
        drop(log);
        let (log, groups) = RaftLog::open(dir.path(), true).expect("reopen");
        assert!(groups.contains_key(&2) && !log.was_dropped(2));
    }

    /// A log (rewritten from 4 KiB) whose group 3 holds one entry and 400 superseded hard states, and the
    /// groups' storage alike.
    fn mostly_dead() -> (tempfile::TempDir, RaftLog, Groups) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = RaftLog::open(dir.path(), true).expect("open");
        log.set_rewrite_bytes(4096);
        log.set_background_rewrites(false);
        let mut groups = Groups::new();
        let storage = groups.entry(3).or_default();
        log.append(3, &[entry(1, 1, "a")]).expect("append");
        storage.wl().append(&[entry(1, 1, "a")]).expect("mem");
        for commit in 0..400 {
            let h = hs(1, commit % 2);
            log.set_hard_state(3, &h).expect("hs");
            storage.wl().set_hardstate(h);
        }
        (dir, log, groups)
    }

    #[test]
    fn a_rewrite_cut_short_is_finished_or_dropped_on_open() {
        let (dir, mut log, groups) = mostly_dead();
        log.sync().expect("sync");
        // a new file without its REWRITTEN record (the crash came while it was written) is dropped
        let unfinished = encode_live(&groups, &BTreeSet::new(), &BTreeMap::new()).expect("live");
        std::fs::write(dir.path().join(NEXT), &unfinished).expect("write");
        drop(log);
        let (mut log, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert!(!dir.path().join(NEXT).exists());
        assert_eq!(datas(&replayed[&3]), vec![(1, 1, "a".into())]);
        // a finished one takes the records written after it, and is put in place by the next open
        // if the crash came before its rename
        log.set_rewrite_bytes(4096);
        log.set_background_rewrites(false);
        assert!(log.maybe_rewrite(&groups).expect("rewrite"));
        log.append(3, &[entry(2, 1, "b")]).expect("append");
        let job = log.prepare_sync().expect("prepare");
        job.write().expect("write");
        job.file.as_ref().expect("file").sync_data().expect("sync");
        assert!(job.rename.is_some(), "renamed only after the sync");
        drop(log);
        let (_, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert!(!dir.path().join(NEXT).exists());
        assert_eq!(
            datas(&replayed[&3]),
            vec![(1, 1, "a".into()), (2, 1, "b".into())]
        );
    }

    #[test]
    fn a_large_mostly_dead_file_is_rewritten_with_the_live_state() {
        let (dir, mut log, groups) = mostly_dead();
        let before = log.len();
        assert!(
            log.maybe_rewrite(&groups).expect("rewrite"),
            "{before} bytes"
        );
        log.append(3, &[entry(2, 1, "b")])
            .expect("append after rewrite");
        log.sync().expect("sync");
        assert!(log.len() < before / 10);
        drop(log);
        let (_, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert_eq!(
            datas(&replayed[&3]),
            vec![(1, 1, "a".into()), (2, 1, "b".into())]
        );
        assert_eq!(
            replayed[&3]
                .initial_state()
                .expect("state")
                .hard_state
                .commit,
            1
        );
    }

    /// A crash now: what the files hold (written, as a kill -9 leaves them) opened from a copy.
    fn crash_copy(dir: &Path) -> (tempfile::TempDir, RaftLog, Groups) {
        let copy = tempfile::tempdir().expect("tempdir");
        for name in [FILE, NEXT] {
            if let Ok(bytes) = std::fs::read(dir.join(name)) {
                std::fs::write(copy.path().join(name), bytes).expect("copy");
            }
        }
        if let Ok(entries) = std::fs::read_dir(dir.join(SNAPSHOT_DIR)) {
            std::fs::create_dir_all(copy.path().join(SNAPSHOT_DIR)).expect("mkdir");
            for entry in entries.flatten() {
                let to = copy.path().join(SNAPSHOT_DIR).join(entry.file_name());
                std::fs::copy(entry.path(), to).expect("copy");
            }
        }
        let (log, groups) = RaftLog::open(copy.path(), true).expect("open the copy");
        (copy, log, groups)
    }

    #[test]
    fn a_rewrite_written_in_the_background_takes_the_records_since_its_live_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = RaftLog::open(dir.path(), true).expect("open");
        log.set_rewrite_bytes(1 << 20);
        // a live state of about 1 MiB (partition 9), its thread's write and sync long enough for a few
        // rounds to come meanwhile, in a file of 3 MiB (partition 8's entries are gone)
        let mut groups = Groups::new();
        let kib = "k".repeat(1024);
        for (p, n) in [(9, 1000u64), (8, 2000)] {
            for i in 1..=n {
                let e = entry(i, 1, &format!("{i}{kib}"));
                log.append(p, std::slice::from_ref(&e)).expect("append");
                if p == 9 {
                    groups.entry(9).or_default().wl().append(&[e]).expect("mem");
                }
            }
        }
        log.drop_group(8).expect("drop");
        groups.entry(3).or_default();
        log.sync().expect("sync");
        let before = log.len();
        assert!(log.maybe_rewrite(&groups).expect("rewrite"));
        assert!(log.rewriting());
        // rounds go on meanwhile, to the old file; a crash after any of them keeps everything synced
        let mut expected = Vec::new();
        let mut taken_over = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        for i in 1u64.. {
            let text = format!("r{i}");
            log.append(3, &[entry(i, 1, &text)]).expect("append");
            expected.push((i, 1, text));
            if i == 2 {
                // a received snapshot's data is kept shared, and goes to the new file too
                log.set_snapshot(6, &snapshot(4, "data-6"))
                    .expect("snapshot");
            }
            log.prepare_sync().expect("prepare").run().expect("run");
            if taken_over.is_none() && !log.rewriting() {
                taken_over = Some(i);
            }
            let (_copy, crashed, replayed) = crash_copy(dir.path());
            assert_eq!(datas(&replayed[&3]), expected, "a crash after round {i}");
            assert_eq!(replayed[&9].last_index().expect("last"), 1000);
            assert!(!replayed.contains_key(&8) && crashed.was_dropped(8));
            if i >= 2 {
                assert_eq!(install_points(&crashed), vec![(6, 4, "data-6".into())]);
            }
            if taken_over.is_some_and(|at| i >= at + 2) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the rewrite never took over"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!dir.path().join(NEXT).exists());
        assert!(log.len() < before / 2, "{} of {before} bytes", log.len());
        drop(log);
        let (log, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert_eq!(datas(&replayed[&3]), expected);
        assert_eq!(install_points(&log), vec![(6, 4, "data-6".into())]);
        assert!(log.was_dropped(8));
    }

    #[test]
    fn a_rewrite_whose_file_cannot_be_written_is_given_up_and_the_old_file_goes_on() {
        let (dir, mut log, groups) = mostly_dead();
        let next = dir.path().join(NEXT);
        // the new file's name is taken (here by a directory): no rewrite starts
        std::fs::create_dir(&next).expect("dir");
        assert!(!log.maybe_rewrite(&groups).expect("rewrite"));
        // a rewrite whose thread failed (the file could not be made) is given up with the next job
        let live = Live::capture(&groups, &log.dropped, &log.installs).expect("live");
        let (done, written) = std::sync::mpsc::channel();
        let failed = write_live(&next, &live, true);
        assert!(failed.is_err());
        done.send(failed).expect("send");
        log.rewrite = Some(Rewrite {
            next: next.clone(),
            live_len: live.len(),
            kept: Vec::new(),
            written,
        });
        let before = log.len();
        log.append(3, &[entry(2, 1, "b")]).expect("append");
        log.sync().expect("sync");
        assert!(!log.rewriting() && log.pending_rename.is_none());
        assert!(log.len() > before, "still the old file");
        drop(log);
        std::fs::remove_dir(&next).expect("rmdir");
        let (_, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert_eq!(
            datas(&replayed[&3]),
            vec![(1, 1, "a".into()), (2, 1, "b".into())]
        );
    }

    fn snapshot(index: u64, data: &str) -> Snapshot {
        Snapshot {
            data: data.as_bytes().to_vec().into(),
            metadata: Some(SnapshotMetadata {
                index,
                term: 2,
                conf_state: Some(ConfState::from((vec![1, 2], vec![]))).into(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    fn install_points(log: &RaftLog) -> Vec<(PartitionId, u64, String)> {
        log.installs()
            .into_iter()
            .map(|(p, s)| {
                let data = String::from_utf8_lossy(&s.data).into_owned();
                (p, s.get_metadata().index, data)
            })
            .collect()
    }

    #[test]
    fn a_snapshot_record_written_in_parts_is_the_protobuf_encoding() {
        for len in [0usize, 1, 127, 128, 300, 16_384, 2_100_000] {
            let data = "x".repeat(len);
            let s = snapshot(7, &data);
            let (head, tail) = snapshot_parts(&s).expect("parts");
            let joined = [head.as_slice(), s.get_data(), &tail].concat();
            assert_eq!(joined, s.write_to_bytes().expect("encode"), "{len} bytes");
            assert_eq!(Snapshot::parse_from_bytes(&joined).expect("decode"), s);
        }
        let bare = Snapshot::default();
        let (head, tail) = snapshot_parts(&bare).expect("parts");
        assert_eq!(
            [head, tail].concat(),
            bare.write_to_bytes().expect("encode")
        );
        // a large one across a reopen: written without zeros ahead, read back whole
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = RaftLog::open(dir.path(), true).expect("open");
        let big = snapshot(9, &"y".repeat(3 << 20));
        log.set_snapshot(2, &big).expect("snapshot");
        log.append(2, &[entry(10, 2, "after")]).expect("append");
        log.sync().expect("sync");
        drop(log);
        let (log, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert_eq!(log.installs(), vec![(2, big)]);
        assert_eq!(datas(&replayed[&2]), vec![(10, 2, "after".into())]);
    }

    #[test]
    fn a_received_snapshot_keeps_its_data_across_reopens_and_rewrites_until_installed() {
        let (dir, mut log, mut groups) = mostly_dead();
        // partition 3: a snapshot at 10 replaces its log, entries follow; partition 5: one at 4
        let storage = groups.get_mut(&3).expect("group");
        storage.wl().apply_snapshot(snapshot(10, "")).expect("mem");
        log.set_snapshot(3, &snapshot(10, "data-3"))
            .expect("snapshot");
        log.append(3, &[entry(11, 2, "k")]).expect("append");
        storage.wl().append(&[entry(11, 2, "k")]).expect("mem");
        log.set_snapshot(5, &snapshot(4, "data-5"))
            .expect("snapshot");
        groups
            .entry(5)
            .or_default()
            .wl()
            .apply_snapshot(snapshot(4, ""))
            .expect("mem");
        log.sync().expect("sync");
        drop(log);
        let (mut log, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert_eq!(
            install_points(&log),
            vec![(3, 10, "data-3".into()), (5, 4, "data-5".into())],
            "a kill -9 before the store had them: installed again at start"
        );
        assert_eq!(replayed[&3].first_index().expect("first"), 11);
        assert_eq!(datas(&replayed[&3]), vec![(11, 2, "k".into())]);
        // a rewrite keeps the data of the snapshots not yet installed, and nothing else
        log.set_rewrite_bytes(64);
        log.set_background_rewrites(false);
        log.set_installed(5, 4).expect("installed");
        assert!(log.maybe_rewrite(&groups).expect("rewrite"));
        let job = log.prepare_sync().expect("prepare");
        job.run().expect("sync");
        drop(log);
        let (mut log, replayed) = RaftLog::open(dir.path(), true).expect("reopen");
        assert_eq!(install_points(&log), vec![(3, 10, "data-3".into())]);
        assert_eq!(replayed[&5].first_index().expect("first"), 5);
        assert_eq!(datas(&replayed[&3]), vec![(11, 2, "k".into())]);
        // an older installation reported changes nothing; a compaction past the point lets it go
        log.set_installed(3, 9).expect("older");
        assert_eq!(install_points(&log).len(), 1);
        log.set_compacted(
            3,
            &SnapshotMetadata {
                index: 11,
                term: 2,
                ..Default::default()
            },
        )
        .expect("compacted");
        assert!(install_points(&log).is_empty());
        log.sync().expect("sync");
        drop(log);
        let (log, _) = RaftLog::open(dir.path(), true).expect("reopen");
        assert!(install_points(&log).is_empty());
    }

    fn kept_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(SNAPSHOT_DIR))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[test]
    fn a_snapshot_kept_in_a_file_is_named_by_its_record_and_deleted_once_let_go_durably() {
        let (dir, mut log, mut groups) = mostly_dead();
        let data = "k".repeat(3 * KEEP_SYNC_BYTES + 5);
        let kept = KeptSnapshot::write(dir.path(), 3, &snapshot(10, &data), true).expect("keep");
        assert_eq!(kept_names(dir.path()), vec![kept.name.clone()]);
        let storage = groups.get_mut(&3).expect("group");
        storage.wl().apply_snapshot(snapshot(10, "")).expect("mem");
        let start = log.len();
        log.set_snapshot_file(3, &snapshot(10, &data), kept.clone())
            .expect("snapshot");
        log.append(3, &[entry(11, 2, "k")]).expect("append");
        storage.wl().append(&[entry(11, 2, "k")]).expect("mem");
        let added = log.len() - start;
        log.sync().expect("sync");
        // the record names the file: the log did not take the data
        let file = std::fs::read(dir.path().join(FILE)).expect("log");
        assert!(file.iter().filter(|b| **b == b'k').count() < 16);
        assert!(added < 1024, "{added} bytes of records");
        // a kill -9 now: installed again at start, from the file
        let (_copy, crashed, replayed) = crash_copy(dir.path());
        assert_eq!(install_points(&crashed), vec![(3, 10, data.clone())]);
        assert_eq!(datas(&replayed[&3]), vec![(11, 2, "k".into())]);
        // a rewrite names the same file (and does not copy its data)
        log.set_rewrite_bytes(64);
        log.set_background_rewrites(false);
        assert!(log.maybe_rewrite(&groups).expect("rewrite"));
        log.prepare_sync().expect("prepare").run().expect("sync");
        assert!(log.len() < 4096, "rewritten: {} bytes", log.len());
        let (_copy, crashed, _) = crash_copy(dir.path());
        assert_eq!(install_points(&crashed), vec![(3, 10, data.clone())]);
        // let go: the file stays until the record that lets it go is synced
        log.set_installed(3, 10).expect("installed");
        // (an `INSTALLED` alone needs no sync, but a file to delete makes the job: an idle node deletes it
        // too)
        let job = log.prepare_sync().expect("prepare");
        job.write().expect("write");
        assert_eq!(kept_names(dir.path()), vec![kept.name.clone()]);
        job.run().expect("sync");
        assert!(kept_names(dir.path()).is_empty());
        drop(log);
        let (log, _) = RaftLog::open(dir.path(), true).expect("reopen");
        assert!(install_points(&log).is_empty());
    }

    #[test]
    fn files_no_record_needs_are_deleted_at_start_and_a_damaged_one_stops_it() {
        let (dir, mut log, _) = mostly_dead();
        // written for a snapshot the log never took (stale, or a crash before its round)
        let stray = KeptSnapshot::write(dir.path(), 4, &snapshot(3, "stray"), true).expect("keep");
        // replaced by a later one of the same partition: the first goes with the second's sync
        let first = KeptSnapshot::write(dir.path(), 5, &snapshot(4, "first"), true).expect("keep");
        let second =
            KeptSnapshot::write(dir.path(), 5, &snapshot(8, "second"), true).expect("keep");
        log.set_snapshot_file(5, &snapshot(4, "first"), first.clone())
            .expect("first");
        log.sync().expect("sync");
        log.set_snapshot_file(5, &snapshot(8, "second"), second.clone())
            .expect("second");
        log.sync().expect("sync");
        let mut left = vec![second.name.clone(), stray.name.clone()];
        left.sort();
        assert_eq!(kept_names(dir.path()), left);
        drop(log);
        let (log, _) = RaftLog::open(dir.path(), true).expect("reopen");
        assert_eq!(install_points(&log), vec![(5, 8, "second".into())]);
        assert_eq!(kept_names(dir.path()), vec![second.name.clone()]);
        drop(log);
        // a named file that lost its data: the node does not start on a store it cannot complete
        std::fs::write(&second.path, "secon").expect("damage");
        match RaftLog::open(dir.path(), true) {
            Err(LogError::Kept { path, .. }) => assert_eq!(path, second.path),
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("opened with a damaged snapshot file"),
        }
    }

    #[test]
    fn a_compaction_drops_the_entries_up_to_its_point_and_keeps_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (mut log, _) = RaftLog::open(dir.path(), true).expect("open");
            let five: Vec<Entry> = (1..=5).map(|i| entry(i, 1, &i.to_string())).collect();
            log.append(4, &five).expect("append");
            log.set_hard_state(4, &hs(1, 5)).expect("hs");
            let point = SnapshotMetadata {
                index: 3,
                term: 1,
                conf_state: Some(ConfState::from((vec![1, 2], vec![]))).into(),
                ..Default::default()
            };
            log.set_compacted(4, &point).expect("compacted");
            log.append(4, &[entry(6, 2, "6")]).expect("append");
            // a compaction point older than the group's start changes nothing
            log.set_compacted(
                4,
                &SnapshotMetadata {
                    index: 1,
                    term: 1,
                    ..Default::default()
                },
            )
            .expect("stale");
            log.sync().expect("sync");
        }
        let (_, groups) = RaftLog::open(dir.path(), true).expect("reopen");
        let g = &groups[&4];
        assert_eq!(
            datas(g),
            vec![(4, 1, "4".into()), (5, 1, "5".into()), (6, 2, "6".into())]
        );
        assert_eq!(g.term(3).expect("the point's term"), 1);
        let state = g.initial_state().expect("state");
        assert_eq!(
            state.hard_state.commit, 5,
            "the hard state is not lowered to the point"
        );
        assert_eq!(state.conf_state.voters, vec![1, 2]);
    }
}
