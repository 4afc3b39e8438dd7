//! A partition's keys as one blob: what a Raft snapshot carries to a replica that needs entries its leader
//! has compacted away (one far behind, one just added, or one started on an empty `data_dir`).
//!
//! Every key of `conv_log` and `user_index` that belongs to a conversation or a user starts with its
//! owner's slot (see [`super::keys`]), and a partition is a fixed set of slots (`slots_of`), so its keys
//! are one range of each tree per slot: a snapshot, an installation and a deletion read only the
//! partition's keys. Two kinds belong to no partition and are never carried: a partition's applied index
//! (`A`, set to the snapshot's index on installation) and the webhook outbox (`o`, each node's own).
//! Media stays per node.
//!
//! Format: records `tree:u8 | key_len:u32 | key | value_len:u32 | value`, big-endian, `tree` 0 for
//! `conv_log` and 1 for `user_index`.

use crate::cluster::placement::slots_of;

use super::{keys, Store, StoreError, StoreResult};

const CONV_LOG: u8 = 0;
const USER_INDEX: u8 = 1;

/// How much of a snapshot's data [`Store::install_partition`] writes between two flushes.
pub(super) const INSTALL_FLUSH_BYTES: usize = 2 << 20;

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take<'a>(data: &'a [u8], at: &mut usize) -> StoreResult<&'a [u8]> {
    let corrupt = || StoreError::Corrupt("partition snapshot".into());
    let len = data
        .get(*at..*at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(corrupt)? as usize;
    let start = *at + 4;
    let bytes = data.get(start..start + len).ok_or_else(corrupt)?;
    *at = start + len;
    Ok(bytes)
}

/// The keys and values of `partition` in `tree`: one range per slot.
fn partition_keys(
    tree: &sled::Tree,
    partition: u32,
    partitions: u32,
) -> impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + '_ {
    slots_of(partition, partitions).flat_map(move |slot| {
        let (start, end) = keys::slot_range(slot);
        tree.range(start..end)
    })
}

impl Store {
    fn trees(&self) -> [(u8, &sled::Tree); 2] {
        [(CONV_LOG, &self.conv_log), (USER_INDEX, &self.user_index)]
    }

    /// Every key of `partition` (of `partitions`) as one blob. Made on the apply thread, between two
    /// entries, so it is the state at the partition's applied index.
    pub fn partition_snapshot(&self, partition: u32, partitions: u32) -> StoreResult<Vec<u8>> {
        let mut blob = Vec::new();
        for (tag, tree) in self.trees() {
            for item in partition_keys(tree, partition, partitions) {
                let (k, v) = item?;
                blob.push(tag);
                put(&mut blob, &k);
                put(&mut blob, &v);
            }
        }
        Ok(blob)
    }

    /// Whether this node has a record of applying anything to `partition` (an applied index): a node
    /// without one holds no key of it (see [`Store::delete_partition_keys`]).
    pub fn holds_partition(&self, partition: u32) -> StoreResult<bool> {
        let key = keys::applied(partition);
        Ok(self.conv_log.contains_key(&key)? || self.user_index.contains_key(&key)?)
    }

    /// Records that this node holds keys of `partition` (an applied index of 0 where there is none): a
    /// partition written directly (one replica, no log) has no applied index otherwise.
    pub fn hold_partition(&self, partition: u32) -> StoreResult<()> {
        let key = keys::applied(partition);
        for (_, tree) in self.trees() {
            tree.compare_and_swap(&key, None as Option<&[u8]>, Some(&0u64.to_be_bytes()[..]))?
                .ok();
        }
        Ok(())
    }

    /// Deletes up to `limit` keys of `partition` (one batch per tree); once it has none left, its applied
    /// indexes too (a crash before that leaves them, and an installation later deletes what is left
    /// first). Returns the keys deleted and whether the partition is gone: the caller deletes a large
    /// partition in steps, doing other work between them.
    pub fn delete_partition_keys(
        &self,
        partition: u32,
        partitions: u32,
        limit: usize,
    ) -> StoreResult<(usize, bool)> {
        let mut deleted = 0;
        for (_, tree) in self.trees() {
            let mut batch = sled::Batch::default();
            for item in partition_keys(tree, partition, partitions).take(limit - deleted) {
                let (k, _) = item?;
                batch.remove(k);
                deleted += 1;
            }
            tree.apply_batch(batch)?;
            if deleted >= limit {
                return Ok((deleted, false));
            }
        }
        for (_, tree) in self.trees() {
            tree.remove(keys::applied(partition))?;
        }
        Ok((deleted, true))
    }

    /// Replaces every key of `partition` with the snapshot's and sets its applied index to `index`.
    ///
    /// Key by key, not as one sled batch or transaction: sled 0.34 takes a process-wide write lock for
    /// either, and installing a large partition (tens of MiB) that way stopped every other read and write
    /// of the node, the partitions it leads included, for up to 0.8 s per partition during a move. The
    /// steps need no atomicity of their own: until the store has flushed an installation, the Raft log
    /// keeps the snapshot and a node that stops installs it again first (`RaftLog::installs`), so a torn
    /// installation is always finished before anything reads the partition. Its applied index is set to
    /// 0 first (the node holds keys of it: see [`Store::holds_partition`]) and to `index` last. Keys of
    /// the first layout (from a node not yet upgraded) get their head.
    ///
    /// The store is flushed after every `INSTALL_FLUSH_BYTES` (2 MiB) of data. sled 0.34 writes its log one
    /// buffer at a time, and a flush (the compaction flusher's, once a second under load) waits for every
    /// buffer written before it while holding sled's concurrency lock for reading; a batch (every entry
    /// the apply thread applies) takes that lock for writing. A 30 to 80 MiB partition written at once
    /// left tens of MiB for the next flush to wait for, and the apply thread, with every partition this
    /// node leads, waited 216 to 775 ms behind it (bench/README.md, "Stop 38"). Flushing as it goes, the
    /// installer waits for its own writes, and a flush has at most that much to wait for.
    pub fn install_partition(
        &self,
        partition: u32,
        partitions: u32,
        data: &[u8],
        index: u64,
    ) -> StoreResult<()> {
        let applied = keys::applied(partition);
        for (_, tree) in self.trees() {
            tree.insert(&applied, &0u64.to_be_bytes()[..])?;
        }
        // what an earlier replica, or an installation cut short, left (none for a new replica)
        for (_, tree) in self.trees() {
            for item in partition_keys(tree, partition, partitions) {
                let (k, _) = item?;
                tree.remove(k)?;
            }
        }
        let trees = self.trees();
        let mut at = 0;
        let mut flushed_at = 0;
        let started_at = self.db_len();
        while at < data.len() {
            if at - flushed_at >= INSTALL_FLUSH_BYTES {
                self.flush_now()?;
                self.release_appended(started_at);
                flushed_at = at;
            }
            let tag = data[at];
            at += 1;
            let key = take(data, &mut at)?;
            let value = take(data, &mut at)?;
            let (_, tree) = trees
                .get(usize::from(tag))
                .ok_or_else(|| StoreError::Corrupt("partition snapshot tree".into()))?;
            match keys::with_head(key) {
                Some(headed) => tree.insert(headed, value)?,
                None => tree.insert(key, value)?,
            };
        }
        for (_, tree) in trees {
            tree.insert(&applied, &index.to_be_bytes()[..])?;
        }
        Ok(())
    }

    /// The length of sled's file (0 if unknown).
    fn db_len(&self) -> u64 {
        self.db_file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len())
    }

    /// Drops the page cache of sled's file from `from` (its length when the installation started) to its
    /// end, all of it just flushed (see [`crate::page_cache`]); the whole range each time, as sled
    /// lengthens its file before it writes the segments below the new end. An installation is a bulk
    /// write that nothing reads back soon (the partition's recent keys stay in sled's own cache): kept, a
    /// joining node's page cache grew by the whole of what it received (882 MiB of a 1 GiB move), each
    /// page of it fresh memory. Pages sled wrote elsewhere in the file (segments it reuses) stay cached.
    fn release_appended(&self, from: u64) {
        if let Some(file) = &self.db_file {
            crate::page_cache::release(file, from, self.db_len());
        }
    }
}
