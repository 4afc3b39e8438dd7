//! Each node's durable state: one sled database under its `data_dir`, holding only what the node owns.
//!
//! [`Store`] is the only code that knows sled; it speaks in ids, sequence numbers and message JSON. The tree and
//! key catalogue is in [`keys`]; durability (group commit) is in [`writer`]. Reads and single-batch writes are
//! in-memory sled operations (microseconds); the fsync runs on the flusher thread, never on an actor thread.

mod conv;
mod features;
pub mod keys;
pub mod media;
pub mod outbox;
mod partition;
pub mod writer;

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{Durability, StoreConfig};
use crate::ids::{ConvId, UserId};
use crate::state::conv::Write;
use crate::state::user::UserWrite;
pub use conv::{ConvHistory, ReplicaBatch};
pub use writer::Flusher;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record under {0}")]
    Corrupt(String),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The friendship state of a direct pair, owned by that pair's conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PairState {
    #[default]
    None,
    Pending {
        from: UserId,
        note: String,
    },
    Friends,
}

/// A group's description (its members are stored one key each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub name: String,
    pub owner: UserId,
}

/// One entry of a user's friend index (derived from the pair states, kept by the user's owner).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FriendEntry {
    Friend,
    Incoming { note: String },
    Outgoing { note: String },
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    conv_log: sled::Tree,
    user_index: sled::Tree,
    media: media::MediaStore,
    flusher: Flusher,
    outbox: outbox::OutboxState,
    /// sled's file, opened again for page cache hints only (see `Store::install_partition`); none if it
    /// cannot be opened (the hints are then skipped).
    db_file: Option<std::sync::Arc<std::fs::File>>,
}

impl Store {
    pub fn open(
        dir: &Path,
        config: &StoreConfig,
        flush_seconds: prometheus::Histogram,
    ) -> StoreResult<Store> {
        let durability = config.durability;
        let db = open_db(dir, config.cache_bytes())?;
        let conv_log = db.open_tree(keys::CONV_LOG)?;
        let user_index = db.open_tree(keys::USER_INDEX)?;
        upgrade_layout(&db, &[&conv_log, &user_index])?;
        let media = media::MediaStore::open(dir, &db)?;
        let flusher = Flusher::start(db.clone(), durability, flush_seconds);
        let outbox = outbox::OutboxState::open(&conv_log)?;
        let db_file = std::fs::File::open(dir.join(SLED_FILE))
            .ok()
            .map(std::sync::Arc::new);
        Ok(Store {
            db,
            conv_log,
            user_index,
            media,
            flusher,
            outbox,
            db_file,
        })
    }

    /// Uploads and stored media of this node.
    pub fn media(&self) -> &media::MediaStore {
        &self.media
    }

    pub fn flusher(&self) -> &Flusher {
        &self.flusher
    }

    /// Makes everything written so far durable now, on the calling thread (the replicas' apply thread,
    /// before a log compaction).
    pub fn flush_now(&self) -> StoreResult<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Flushes everything and stops the flusher (clean shutdown).
    pub fn close(&self) -> StoreResult<()> {
        self.flusher.stop();
        self.db.flush()?;
        Ok(())
    }

    /// Records `partitions` as this data's partition count on first use; afterwards answers the recorded
    /// count when `partitions` differs from it (keys would hash elsewhere: the node must not start).
    pub fn fix_partitions(&self, partitions: u32) -> StoreResult<Option<u32>> {
        let meta = self.db.open_tree(keys::META)?;
        let value = partitions.to_be_bytes();
        match meta.compare_and_swap(
            keys::META_PARTITIONS,
            None as Option<&[u8]>,
            Some(&value[..]),
        )? {
            Ok(()) => {
                self.db.flush()?;
                Ok(None)
            }
            Err(e) => {
                let stored = e
                    .current
                    .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
                    .map(u32::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt("meta/partitions".into()))?;
                Ok((stored != partitions).then_some(stored))
            }
        }
    }

    /// The membership record this node last applied (see `cluster::membership`), as stored.
    pub fn membership(&self) -> StoreResult<Option<Vec<u8>>> {
        let meta = self.db.open_tree(keys::META)?;
        Ok(meta.get(keys::META_MEMBERSHIP)?.map(|v| v.to_vec()))
    }

    /// Replaces the stored membership record (durable with the next flush; the metadata group's log
    /// holds what a crash loses until then).
    pub fn set_membership(&self, bytes: &[u8]) -> StoreResult<()> {
        let meta = self.db.open_tree(keys::META)?;
        meta.insert(keys::META_MEMBERSHIP, bytes)?;
        Ok(())
    }

    // ---- conversations ----

    /// The highest seq of `conv` and that message's JSON.
    pub fn last_message(&self, conv: &ConvId) -> StoreResult<Option<(u64, String)>> {
        let prefix = keys::msg_prefix(conv.as_str());
        match self.conv_log.scan_prefix(&prefix).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry?;
                let seq = keys::seq_of_msg_key(&k)
                    .ok_or_else(|| StoreError::Corrupt(conv.to_string()))?;
                Ok(Some((seq, utf8(v, conv)?)))
            }
        }
    }

    /// The `(seq, ts)` a `cid` was accepted with, if it was.
    pub fn cid(
        &self,
        conv: &ConvId,
        sender: &UserId,
        cid: &str,
    ) -> StoreResult<Option<(u64, u64)>> {
        let v = self
            .conv_log
            .get(keys::cid(conv.as_str(), sender.as_str(), cid))?;
        Ok(v.and_then(|v| keys::parse_two_u64(&v)))
    }

    /// Points `cid` at `(seq, ts)` whatever it held (replaces an entry whose message never reached disk).
    pub fn set_cid(
        &self,
        conv: &ConvId,
        sender: &UserId,
        cid: &str,
        seq: u64,
        ts: u64,
    ) -> StoreResult<()> {
        let cid = crate::ids::Cid::parse(cid).map_err(|_| StoreError::Corrupt(conv.to_string()))?;
        self.write_conv(
            conv,
            &[Write::Cid {
                from: sender.clone(),
                cid,
                seq,
                ts,
            }],
        )
    }

    /// Writes a message (new, or replacing a recalled one). Its dedupe entry is written first
    /// ([`Store::set_cid`]), so a crash between the two leaves at worst an entry whose message is missing,
    /// which the conversation's core detects before trusting an entry. No `sled::Batch` here: in sled 0.34
    /// every batch forces two log writes (`pin_log` rolls the log buffer before and after), which costs more
    /// than everything else a message does.
    pub fn append(&self, conv: &ConvId, seq: u64, json: &str) -> StoreResult<()> {
        let json = json.to_owned();
        self.write_conv(conv, &[Write::Message { seq, json }])
    }

    pub fn message(&self, conv: &ConvId, seq: u64) -> StoreResult<Option<String>> {
        self.conv_log
            .get(keys::msg(conv.as_str(), seq))?
            .map(|v| utf8(v, conv))
            .transpose()
    }

    /// Messages with `seq > after`, ascending, at most `limit`.
    pub fn messages_after(
        &self,
        conv: &ConvId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let start = keys::msg(conv.as_str(), after.saturating_add(1));
        let end = keys::msg(conv.as_str(), u64::MAX);
        let mut out = Vec::new();
        for entry in self.conv_log.range(start..=end).take(limit) {
            out.push(utf8(entry?.1, conv)?);
        }
        Ok(out)
    }

    /// The `limit` messages just below `before`, ascending.
    pub fn messages_before(
        &self,
        conv: &ConvId,
        before: u64,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let start = keys::msg(conv.as_str(), 0);
        let end = keys::msg(conv.as_str(), before);
        let mut out = Vec::new();
        for entry in self.conv_log.range(start..end).rev().take(limit) {
            out.push(utf8(entry?.1, conv)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Every member's read position in `conv`.
    pub fn read_positions(&self, conv: &ConvId) -> StoreResult<Vec<(UserId, u64)>> {
        scan(
            &self.conv_log,
            &keys::read_prefix(conv.as_str()),
            conv.as_str(),
            |user, v| {
                Some((
                    UserId::parse(user).ok()?,
                    keys::parse_u64(v, 0).unwrap_or(0),
                ))
            },
        )
    }

    pub fn set_read(&self, conv: &ConvId, user: &UserId, seq: u64) -> StoreResult<()> {
        let user = user.clone();
        self.write_conv(conv, &[Write::Read { user, seq }])
    }

    pub fn pair(&self, conv: &ConvId) -> StoreResult<PairState> {
        match self.conv_log.get(keys::pair(conv.as_str()))? {
            None => Ok(PairState::None),
            Some(v) => {
                serde_json::from_slice(&v).map_err(|_| StoreError::Corrupt(conv.to_string()))
            }
        }
    }

    pub fn set_pair(&self, conv: &ConvId, state: &PairState) -> StoreResult<()> {
        self.write_conv(conv, &[Write::Pair(state.clone())])
    }

    // ---- groups ----

    pub fn group(&self, conv: &ConvId) -> StoreResult<Option<GroupMeta>> {
        match self.conv_log.get(keys::group(conv.as_str()))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| StoreError::Corrupt(conv.to_string())),
        }
    }

    pub fn set_group(&self, conv: &ConvId, meta: &GroupMeta) -> StoreResult<()> {
        self.write_conv(conv, &[Write::Group(meta.clone())])
    }

    pub fn group_members(&self, conv: &ConvId) -> StoreResult<Vec<UserId>> {
        scan(
            &self.conv_log,
            &keys::member_prefix(conv.as_str()),
            conv.as_str(),
            |user, _| UserId::parse(user).ok(),
        )
    }

    /// Adds or removes members: one key each, never a rewrite of the whole list.
    pub fn set_members(&self, conv: &ConvId, users: &[UserId], member: bool) -> StoreResult<()> {
        let users = users.to_vec();
        self.write_conv(conv, &[Write::Members { users, member }])
    }

    // ---- users ----

    pub fn user_convs(&self, user: &UserId) -> StoreResult<Vec<ConvId>> {
        scan(
            &self.user_index,
            &keys::user_conv_prefix(user.as_str()),
            user.as_str(),
            |conv, _| ConvId::parse(conv).ok(),
        )
    }

    pub fn add_user_conv(&self, user: &UserId, conv: &ConvId) -> StoreResult<()> {
        let conv = conv.clone();
        self.write_user(user, &[UserWrite::Conv { conv, member: true }])
    }

    pub fn remove_user_conv(&self, user: &UserId, conv: &ConvId) -> StoreResult<()> {
        let conv = conv.clone();
        self.write_user(
            user,
            &[UserWrite::Conv {
                conv,
                member: false,
            }],
        )
    }

    pub fn friends(&self, user: &UserId) -> StoreResult<Vec<(UserId, FriendEntry)>> {
        scan(
            &self.user_index,
            &keys::user_friend_prefix(user.as_str()),
            user.as_str(),
            |other, v| {
                Some((
                    UserId::parse(other).ok()?,
                    serde_json::from_slice::<FriendEntry>(v).ok()?,
                ))
            },
        )
    }

    pub fn set_friend(
        &self,
        user: &UserId,
        other: &UserId,
        entry: Option<&FriendEntry>,
    ) -> StoreResult<()> {
        let write = UserWrite::Friend {
            other: other.clone(),
            entry: entry.cloned(),
        };
        self.write_user(user, &[write])
    }

    /// The user's access record (default: never logged out, not banned).
    pub fn user_access(&self, user: &UserId) -> StoreResult<crate::state::user::Access> {
        match self.user_index.get(keys::user_access(user.as_str()))? {
            None => Ok(Default::default()),
            Some(v) => {
                serde_json::from_slice(&v).map_err(|_| StoreError::Corrupt(user.to_string()))
            }
        }
    }

    pub fn set_user_access(
        &self,
        user: &UserId,
        access: &crate::state::user::Access,
    ) -> StoreResult<()> {
        self.write_user(user, &[UserWrite::Access(*access)])
    }

    pub fn durability(&self) -> Durability {
        self.flusher.durability()
    }
}

/// Every entry under `prefix`, its key's remainder (an id) and value parsed by `parse`; an entry that does not
/// parse is a corrupt record of `owner`.
fn scan<T>(
    tree: &sled::Tree,
    prefix: &[u8],
    owner: &str,
    parse: impl Fn(&str, &[u8]) -> Option<T>,
) -> StoreResult<Vec<T>> {
    let mut out = Vec::new();
    for entry in tree.scan_prefix(prefix) {
        let (k, v) = entry?;
        let item = std::str::from_utf8(&k[prefix.len()..])
            .ok()
            .and_then(|id| parse(id, &v));
        out.push(item.ok_or_else(|| StoreError::Corrupt(owner.to_string()))?);
    }
    Ok(out)
}

/// How long to wait for a previous holder of the data directory (a node still shutting down) to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting up to `LOCK_WAIT` while another instance still holds the directory's lock (a node
/// restarted right after the old one was told to stop). Two live nodes on one directory still fail.
/// Keys re-written per batch while upgrading the key layout.
const UPGRADE_BATCH: usize = 10_000;

/// Gives every key of the first layout its head ([`keys::with_head`]), in batches that each move keys
/// atomically (a crash in between leaves some keys moved and the rest for the next start), then records
/// the layout. A store already at [`keys::LAYOUT`] is left alone.
fn upgrade_layout(db: &sled::Db, trees: &[&sled::Tree]) -> StoreResult<()> {
    let meta = db.open_tree(keys::META)?;
    if meta.contains_key(keys::META_LAYOUT)? {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut moved = 0;
    for tree in trees {
        loop {
            // headed keys start with `OWNED` and sort before every key of the first layout
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for item in tree.range(vec![keys::OWNED + 1]..) {
                let (k, v) = item?;
                if let Some(headed) = keys::with_head(&k) {
                    batch.insert(headed, v);
                    batch.remove(k);
                    n += 1;
                    if n == UPGRADE_BATCH {
                        break;
                    }
                }
            }
            if n == 0 {
                break;
            }
            tree.apply_batch(batch)?;
            moved += n;
        }
    }
    meta.insert(keys::META_LAYOUT, &keys::LAYOUT.to_be_bytes()[..])?;
    db.flush()?;
    if moved > 0 {
        tracing::info!(keys = moved, took = ?started.elapsed(), "store upgraded to key layout {}", keys::LAYOUT);
    }
    Ok(())
}

/// The file sled 0.34 keeps its pages in, in the store's directory.
const SLED_FILE: &str = "db";

fn open_db(dir: &Path, cache_bytes: u64) -> StoreResult<sled::Db> {
    let started = std::time::Instant::now();
    loop {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(Some(500));
        match config.open() {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn utf8(v: sled::IVec, conv: &ConvId) -> StoreResult<String> {
    String::from_utf8(v.to_vec()).map_err(|_| StoreError::Corrupt(conv.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> Store {
        let hist = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t"))
            .expect("hist");
        Store::open(dir, &StoreConfig::default(), hist).expect("open")
    }

    #[test]
    fn messages_survive_reopen_and_page_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conv = ConvId::parse("dm:a:b").expect("valid");
        let other = ConvId::parse("dm:a:bc").expect("valid");
        let a = UserId::parse("a").expect("valid");
        {
            let s = store(dir.path());
            for seq in 1..=10u64 {
                let json = format!("{{\"seq\":{seq}}}");
                s.set_cid(&conv, &a, &format!("c{seq}"), seq, 100 + seq)
                    .expect("cid");
                s.append(&conv, seq, &json).expect("append");
            }
            s.append(&other, 1, "{}").expect("append");
            s.close().expect("close");
        }
        let s = store(dir.path());
        assert_eq!(s.last_message(&conv).expect("last").map(|l| l.0), Some(10));
        assert_eq!(s.cid(&conv, &a, "c4").expect("cid"), Some((4, 104)));
        assert_eq!(s.cid(&conv, &a, "nope").expect("cid"), None);
        assert_eq!(s.messages_after(&conv, 7, 100).expect("after").len(), 3);
        assert_eq!(
            s.messages_after(&conv, 0, 2).expect("after"),
            vec!["{\"seq\":1}", "{\"seq\":2}"]
        );
        assert_eq!(
            s.messages_before(&conv, 4, 2).expect("before"),
            vec!["{\"seq\":2}", "{\"seq\":3}"]
        );
        s.set_read(&conv, &a, 10).expect("set read");
        assert_eq!(
            s.read_positions(&conv).expect("reads"),
            vec![(a.clone(), 10)]
        );
        s.close().expect("close");
    }

    /// Conversations `dm:a:bN` until one in each of two partitions (of 16) is found.
    fn convs_in_two_partitions() -> (ConvId, ConvId, u32) {
        let all: Vec<ConvId> = (0..100)
            .map(|i| ConvId::parse(&format!("dm:a:b{i}")).expect("valid"))
            .collect();
        let p = |c: &ConvId| crate::cluster::placement::partition_of(c.as_str(), 16);
        let first = all[0].clone();
        let other = all
            .iter()
            .find(|c| p(c) != p(&first))
            .expect("another partition")
            .clone();
        let partition = p(&first);
        (first, other, partition)
    }

    /// A conversation's partition filled with about `pieces` times [`partition::INSTALL_FLUSH_BYTES`] of
    /// messages, in a store of its own: the conversation, the partition, the message count and the
    /// partition's snapshot.
    fn large_partition(pieces: usize) -> (ConvId, u32, usize, Vec<u8>) {
        let (conv, _, p) = convs_in_two_partitions();
        let from = tempfile::tempdir().expect("tempdir");
        let src = store(from.path());
        let body = "x".repeat(8 << 10);
        let count = pieces * partition::INSTALL_FLUSH_BYTES / body.len();
        for seq in 1..=count as u64 {
            src.append(&conv, seq, &format!("{{\"seq\":{seq},\"b\":\"{body}\"}}"))
                .expect("append");
        }
        let blob = src.partition_snapshot(p, 16).expect("snapshot");
        (conv, p, count, blob)
    }

    /// A partition larger than [`partition::INSTALL_FLUSH_BYTES`] is installed across several flushes,
    /// whole, and is there after a reopen.
    #[test]
    fn a_large_partition_installs_whole_across_flushes() {
        let (conv, p, count, blob) = large_partition(3);
        let to = tempfile::tempdir().expect("tempdir");
        assert!(blob.len() > 2 * partition::INSTALL_FLUSH_BYTES);
        {
            let dst = store(to.path());
            dst.hold_partition(p).expect("hold");
            dst.install_partition(p, 16, &blob, 42).expect("install");
            dst.close().expect("close");
        }
        let dst = store(to.path());
        let got = dst.messages_after(&conv, 0, count + 10).expect("after");
        assert_eq!(got.len(), count);
        assert_eq!(dst.conv_applied(p).expect("applied"), 42);
    }

    /// What an installation appended to sled's file and flushed leaves the page cache (see
    /// `Store::install_partition`); read with util-linux's `fincore`.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_installation_leaves_what_it_flushed_out_of_the_page_cache() {
        let (conv, p, count, blob) = large_partition(8);
        let to = tempfile::tempdir().expect("tempdir");
        let dst = store(to.path());
        dst.hold_partition(p).expect("hold");
        dst.install_partition(p, 16, &blob, 42).expect("install");
        let file = to.path().join(SLED_FILE);
        let len = std::fs::metadata(&file).expect("sled's file").len();
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(&file)
            .output()
            .expect("fincore (util-linux)");
        let cached: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("fincore's count");
        assert!(
            len >= blob.len() as u64,
            "the file holds what was installed"
        );
        assert!(
            cached < 2 * partition::INSTALL_FLUSH_BYTES as u64 + (1 << 20),
            "{cached} bytes of sled's {len} still cached after installing {} (at most the last \
             piece, unflushed, and what sled wrote elsewhere)",
            blob.len()
        );
        assert_eq!(
            dst.messages_after(&conv, 0, count + 10)
                .expect("after")
                .len(),
            count
        );
    }

    #[test]
    fn a_partition_moves_as_its_keys_alone() {
        let (conv, other, p) = convs_in_two_partitions();
        let a = UserId::parse("a").expect("valid");
        let from = tempfile::tempdir().expect("tempdir");
        let to = tempfile::tempdir().expect("tempdir");
        let (src, dst) = (store(from.path()), store(to.path()));
        for seq in 1..=5u64 {
            src.append(&conv, seq, &format!("{{\"seq\":{seq}}}"))
                .expect("append");
        }
        src.set_read(&conv, &a, 3).expect("read");
        src.append(&other, 1, "{}").expect("append");
        dst.append(&conv, 9, "{\"stale\":true}")
            .expect("stale key on the receiver");
        dst.hold_partition(p).expect("hold");
        let blob = src.partition_snapshot(p, 16).expect("snapshot");
        dst.install_partition(p, 16, &blob, 42).expect("install");
        assert_eq!(
            dst.messages_after(&conv, 0, 100).expect("after").len(),
            5,
            "the stale key replaced"
        );
        assert_eq!(
            dst.read_positions(&conv).expect("reads"),
            vec![(a.clone(), 3)]
        );
        assert!(
            dst.last_message(&other).expect("other").is_none(),
            "other partitions stay out"
        );
        // in steps of at most 4 keys: the partition is gone with the last one
        assert_eq!(
            src.delete_partition_keys(p, 16, 4).expect("delete"),
            (4, false)
        );
        assert_eq!(
            src.delete_partition_keys(p, 16, 4).expect("delete"),
            (2, true)
        );
        assert!(src.last_message(&conv).expect("gone").is_none());
        assert_eq!(
            src.last_message(&other).expect("kept").map(|l| l.0),
            Some(1)
        );
        assert!(!src.holds_partition(p).expect("holds"));
    }

    #[test]
    fn a_store_of_the_first_layout_is_upgraded_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conv = ConvId::parse("dm:a:b").expect("valid");
        {
            // the first layout: the tag, then the owner (no head), and no layout record
            let db = sled::open(dir.path()).expect("sled");
            let log = db.open_tree(keys::CONV_LOG).expect("tree");
            let mut old = b"mdm:a:b\0".to_vec();
            old.extend_from_slice(&7u64.to_be_bytes());
            log.insert(old, &b"{\"seq\":7}"[..]).expect("insert");
            log.insert(keys::applied(3), &5u64.to_be_bytes()[..])
                .expect("applied");
            db.open_tree(keys::USER_INDEX)
                .expect("tree")
                .insert(b"ca\0dm:a:b", &b""[..])
                .expect("insert");
            db.flush().expect("flush");
        }
        let s = store(dir.path());
        assert_eq!(s.last_message(&conv).expect("last").map(|l| l.0), Some(7));
        let a = UserId::parse("a").expect("valid");
        assert_eq!(s.user_convs(&a).expect("convs"), vec![conv.clone()]);
        assert!(s.holds_partition(3).expect("applied index kept"));
        s.close().expect("close");
        drop(s);
        let s = store(dir.path());
        assert_eq!(s.last_message(&conv).expect("again").map(|l| l.0), Some(7));
    }

    #[test]
    fn a_second_open_waits_for_the_first_to_let_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = store(dir.path());
        let path = dir.path().to_path_buf();
        let second = std::thread::spawn(move || store(&path));
        std::thread::sleep(std::time::Duration::from_millis(300));
        first.close().expect("close");
        drop(first);
        second.join().expect("second open").close().expect("close");
    }

    #[test]
    fn friends_and_pairs_roundtrip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let conv = ConvId::parse("dm:a:b").expect("valid");
        let (a, b) = (
            UserId::parse("a").expect("valid"),
            UserId::parse("b").expect("valid"),
        );
        assert_eq!(s.pair(&conv).expect("pair"), PairState::None);
        let pending = PairState::Pending {
            from: a.clone(),
            note: "hi".into(),
        };
        s.set_pair(&conv, &pending).expect("set");
        assert_eq!(s.pair(&conv).expect("pair"), pending);
        s.set_friend(&a, &b, Some(&FriendEntry::Outgoing { note: "hi".into() }))
            .expect("set");
        assert_eq!(
            s.friends(&a).expect("friends"),
            vec![(b.clone(), FriendEntry::Outgoing { note: "hi".into() })]
        );
        s.set_friend(&a, &b, None).expect("remove");
        assert!(s.friends(&a).expect("friends").is_empty());
        s.add_user_conv(&a, &conv).expect("add");
        assert_eq!(s.user_convs(&a).expect("convs"), vec![conv]);
        s.close().expect("close");
    }
}
