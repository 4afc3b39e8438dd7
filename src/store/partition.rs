//! A partition's keys as one blob: what a Raft snapshot carries to a replica that needs entries its leader
//! has compacted away (one far behind, or one started on an empty `data_dir`).
//!
//! Every key of `conv_log` and `user_index` belongs to one conversation or user: the id right after the
//! key's tag, up to the first `0x00` or the end (see [`super::keys`]), and so to that id's partition. Two
//! kinds belong to no key and are never carried: a partition's applied index (`A`, set to the snapshot's
//! index on installation) and the webhook outbox (`o`, each node's own). Media stays per node.
//!
//! The keys are not ordered by partition, so a snapshot reads every key: several are made in one pass
//! ([`Store::partition_snapshots`]), a new replica installs without looking for old keys
//! ([`Store::holds_partition`]), and the keys of partitions a node dropped are deleted in batches
//! ([`Store::delete_partitions`]).
//!
//! Format: records `tree:u8 | key_len:u32 | key | value_len:u32 | value`, big-endian, `tree` 0 for
//! `conv_log` and 1 for `user_index`.

use crate::cluster::placement::partition_of;

use super::{keys, Store, StoreError, StoreResult};

const CONV_LOG: u8 = 0;
const USER_INDEX: u8 = 1;

/// The conversation or user a key of `conv_log` or `user_index` belongs to (`None` for the applied
/// indexes and the outbox).
fn owner(key: &[u8]) -> Option<&[u8]> {
    let (&tag, rest) = key.split_first()?;
    if tag == b'A' || tag == keys::OUTBOX {
        return None;
    }
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn partition_of_key(key: &[u8], partitions: u32) -> Option<u32> {
    owner(key)
        .and_then(|o| std::str::from_utf8(o).ok())
        .map(|o| partition_of(o, partitions))
}

fn in_partition(key: &[u8], partition: u32, partitions: u32) -> bool {
    partition_of_key(key, partitions) == Some(partition)
}

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

impl Store {
    fn trees(&self) -> [(u8, &sled::Tree); 2] {
        [(CONV_LOG, &self.conv_log), (USER_INDEX, &self.user_index)]
    }

    /// Every key of `partition` (of `partitions`) as one blob. Made on the apply thread, between two
    /// entries, so it is the state at the partition's applied index.
    pub fn partition_snapshot(&self, partition: u32, partitions: u32) -> StoreResult<Vec<u8>> {
        let mut blobs = self.partition_snapshots(&[partition], partitions)?;
        Ok(blobs.pop().unwrap_or_default())
    }

    /// [`Store::partition_snapshot`] of several partitions with one pass over the store (the keys are not
    /// ordered by partition: every snapshot reads every key), in the order asked.
    pub fn partition_snapshots(
        &self,
        wanted: &[u32],
        partitions: u32,
    ) -> StoreResult<Vec<Vec<u8>>> {
        let mut out = vec![Vec::new(); wanted.len()];
        for (tag, tree) in self.trees() {
            for item in tree.iter() {
                let (k, v) = item?;
                let Some(p) = partition_of_key(&k, partitions) else {
                    continue;
                };
                if let Some(i) = wanted.iter().position(|w| *w == p) {
                    let blob = &mut out[i];
                    blob.push(tag);
                    put(blob, &k);
                    put(blob, &v);
                }
            }
        }
        Ok(out)
    }

    /// Whether this node has a record of applying anything to `partition` (an applied index): a node
    /// without one holds no key of it (see [`Store::delete_partitions`]).
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

    /// Deletes every key of `partitions`, with one pass over the store, then their applied indexes (a
    /// crash before that leaves the indexes, and an installation later deletes what is left first).
    pub fn delete_partitions(&self, doomed: &[u32], partitions: u32) -> StoreResult<usize> {
        let mut deleted = 0;
        for (_, tree) in self.trees() {
            let mut batch = sled::Batch::default();
            for item in tree.iter().keys() {
                let k = item?;
                if partition_of_key(&k, partitions).is_some_and(|p| doomed.contains(&p)) {
                    batch.remove(k);
                    deleted += 1;
                }
            }
            tree.apply_batch(batch)?;
        }
        for (_, tree) in self.trees() {
            let mut batch = sled::Batch::default();
            for p in doomed {
                batch.remove(keys::applied(*p));
            }
            tree.apply_batch(batch)?;
        }
        Ok(deleted)
    }

    /// Replaces every key of `partition` with the snapshot's and sets its applied index to `index`, in one
    /// transaction over both trees (a crash leaves the old state or the new one, never a mix).
    pub fn install_partition(
        &self,
        partition: u32,
        partitions: u32,
        data: &[u8],
        index: u64,
    ) -> StoreResult<()> {
        let mut batches = [sled::Batch::default(), sled::Batch::default()];
        // a node that holds nothing of the partition (a new replica) has nothing to replace
        let holds = self.holds_partition(partition)?;
        for (tag, tree) in self.trees() {
            let batch = &mut batches[usize::from(tag)];
            if holds {
                for item in tree.iter().keys() {
                    let k = item?;
                    if in_partition(&k, partition, partitions) {
                        batch.remove(k);
                    }
                }
            }
            batch.insert(keys::applied(partition), &index.to_be_bytes()[..]);
        }
        let mut at = 0;
        while at < data.len() {
            let tag = data[at];
            at += 1;
            let key = take(data, &mut at)?;
            let value = take(data, &mut at)?;
            let batch = batches
                .get_mut(usize::from(tag))
                .ok_or_else(|| StoreError::Corrupt("partition snapshot tree".into()))?;
            batch.insert(key, value);
        }
        let [conv, user] = batches;
        use sled::Transactional;
        (&self.conv_log, &self.user_index)
            .transaction(|(c, u)| {
                c.apply_batch(&conv)?;
                u.apply_batch(&user)?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Corrupt("partition snapshot transaction".into())
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_belong_to_the_id_after_their_tag() {
        assert_eq!(owner(b"mdm:a:b\0\x00\x01"), Some(&b"dm:a:b"[..]));
        assert_eq!(owner(b"pdm:a:b"), Some(&b"dm:a:b"[..]));
        assert_eq!(owner(b"aalice"), Some(&b"alice"[..]));
        assert_eq!(owner(b"A\0\0\0\x07"), None);
        assert_eq!(owner(b"o\0\0\0\0\0\0\0\x01"), None);
        assert_eq!(owner(b""), None);
    }
}
