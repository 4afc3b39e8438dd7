//! Where a key lives with replication: every user, conversation and group key hashes to one of
//! `cluster.partitions` partitions, and each partition is kept on `cluster.replicas` distinct nodes taken
//! from the consistent-hash ring over the cluster's members (the ring's replication candidates for the
//! partition's point, in ring order; the first is the preferred leader).
//!
//! The [`Layout`] is a pure function of the membership record (see [`super::membership`]) and the config's
//! shape, so every node with the same record computes the same one: the *placement* (each partition's
//! replicas as its leader last reported them) and the *target* (where the ring wants them). The partition
//! hash (FNV-1a 64 of the key's bytes, modulo the partition count) is pinned by a unit test so that a
//! dependency bump can move no key to another partition; the partition count itself is fixed once a node
//! holds data (the store refuses another value, see `Store::fix_partitions`).

use std::collections::{BTreeSet, HashMap};
use std::hash::Hasher;

use fnv::FnvHasher;

use super::membership::{Membership, Shape};
use super::ring::Ring;
use crate::config::Config;
use crate::ids::NodeId;
use crate::raft::multi::raft_id;

/// A partition's number, `0..cluster.partitions`.
pub type PartitionId = u32;

/// How many slots keys hash into: [`crate::config::MAX_PARTITIONS`]. Every key of the store starts with
/// its owner's slot, so a partition's keys are a few ranges of the store (see `store::keys`).
pub const SLOTS: u32 = crate::config::MAX_PARTITIONS;

/// The slot of `key` (a user id or a conversation id): its FNV-1a hash modulo [`SLOTS`].
pub fn slot_of(key: &[u8]) -> u16 {
    let mut h = FnvHasher::default();
    h.write(key);
    // the remainder is below SLOTS, 2^16
    u16::try_from(h.finish() % u64::from(SLOTS)).unwrap_or(0)
}

/// The partition of `key` (a user id or a conversation id) among `partitions`: its slot modulo
/// `partitions` (for a partition count that divides [`SLOTS`], as every power of two up to it does,
/// the same as its hash modulo `partitions`).
pub fn partition_of(key: &str, partitions: u32) -> PartitionId {
    partition_of_slot(slot_of(key.as_bytes()), partitions)
}

/// The partition the keys of `slot` belong to.
pub fn partition_of_slot(slot: u16, partitions: u32) -> PartitionId {
    u32::from(slot) % partitions.max(1)
}

/// The slots of `partition`, in order.
pub fn slots_of(partition: PartitionId, partitions: u32) -> impl Iterator<Item = u16> {
    (partition..SLOTS)
        .step_by(partitions.max(1) as usize)
        .filter_map(|s| u16::try_from(s).ok())
}

/// Where every partition is, as this node's membership record says: its replicas as last reported
/// (the placement) and where the ring wants them (the target). Rebuilt whenever the record changes; a
/// node that joins has none until its first record arrives.
#[derive(Debug, Clone)]
pub struct Layout {
    shape: Shape,
    membership: Option<Membership>,
    target: Vec<Vec<NodeId>>,
    /// The holders of the metadata group (every member that holds data), ring order.
    holders: Vec<NodeId>,
    /// Raft id → node, for every member.
    ids: HashMap<u64, NodeId>,
    /// [`Layout::moving`], counted once: the apply thread asks after every input while dropped
    /// partitions wait for deletion, and counting took 3% of a move's CPU.
    moving: usize,
    /// [`Layout::receiving`], found once with `moving`.
    receiving: BTreeSet<NodeId>,
}

impl Layout {
    pub fn of(shape: Shape, membership: Option<Membership>) -> Layout {
        let target = membership
            .as_ref()
            .map(|m| m.target(shape))
            .unwrap_or_else(|| vec![Vec::new(); shape.partitions as usize]);
        let holders = membership
            .as_ref()
            .map(|m| {
                let ring = Ring::from_ids(m.holders().cloned().collect(), shape.vnodes);
                ring.candidates(&partition_point(shape.partitions))
                    .collect()
            })
            .unwrap_or_default();
        let ids = membership
            .iter()
            .flat_map(|m| &m.members)
            .map(|m| (raft_id(&m.id), m.id.clone()))
            .collect();
        let moving = membership.as_ref().map_or(0, |m| m.moving(&target));
        let receiving = membership
            .as_ref()
            .map(|m| m.receiving(&target))
            .unwrap_or_default();
        Layout {
            shape,
            membership,
            target,
            holders,
            ids,
            moving,
            receiving,
        }
    }

    /// The config's first members (a cluster that has not changed its membership yet).
    pub fn initial(config: &Config) -> Layout {
        Layout::of(Shape::of(config), Some(Membership::initial(config)))
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn partitions(&self) -> u32 {
        self.shape.partitions
    }

    /// The metadata group's number: the one after the last partition.
    pub fn meta(&self) -> PartitionId {
        self.shape.partitions
    }

    pub fn partition(&self, key: &str) -> PartitionId {
        partition_of(key, self.shape.partitions)
    }

    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    /// The nodes that keep partition `p` as last reported, the preferred leader first while it is
    /// settled (for the metadata group: every member that holds data).
    pub fn replicas(&self, p: PartitionId) -> &[NodeId] {
        if p == self.meta() {
            return &self.holders;
        }
        self.membership
            .as_ref()
            .and_then(|m| m.placement.get(usize::try_from(p).ok()?))
            .map_or(&[], Vec::as_slice)
    }

    /// Where the ring wants partition `p`'s replicas, the preferred leader first.
    pub fn target(&self, p: PartitionId) -> &[NodeId] {
        if p == self.meta() {
            return &self.holders;
        }
        usize::try_from(p)
            .ok()
            .and_then(|i| self.target.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// How many partitions are not where the ring wants them.
    pub fn moving(&self) -> usize {
        self.moving
    }

    /// Whether `node` is still taking in partitions: some partition's target names it and its placement
    /// does not yet. Such a node is busy installing snapshots (a 1 GiB move: 200 of them, up to 0.8 s
    /// each on the bench machine) and what it led would wait behind them: leadership goes to it once
    /// it is done (see the driver's `balance` and the leader's hand-over in `moves`).
    pub fn receiving(&self, node: &NodeId) -> bool {
        self.receiving.contains(node)
    }

    /// The member with Raft id `id`.
    pub fn node(&self, id: u64) -> Option<&NodeId> {
        self.ids.get(&id)
    }

    /// The partitions (and the metadata group) `node` keeps a replica of, as last reported.
    pub fn partitions_of<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = PartitionId> + 'a {
        (0..=self.meta()).filter(move |p| self.replicas(*p).contains(node))
    }
}

/// The point on the ring a partition's replicas are taken from: the partition number mixed first
/// (SplitMix64's finalizer), because the ring's FNV-1a leaves strings that differ only in their last
/// characters next to each other: `partition/0` .. `partition/15` all fell in one arc, so one node was the
/// preferred leader of all 16 partitions, and of 77 of 256 against another's 34 in a 4-node cluster.
pub(crate) fn partition_point(p: PartitionId) -> String {
    let mut z = u64::from(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    format!("partition/{z:016x}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn slots_keep_the_partition_of_every_key_for_a_power_of_two() {
        for key in ["alice", "g:team", "dm:a:b", ""] {
            let mut h = FnvHasher::default();
            h.write(key.as_bytes());
            for partitions in [1u32, 16, 256, SLOTS] {
                let by_hash = u32::try_from(h.finish() % u64::from(partitions)).expect("u32");
                assert_eq!(
                    partition_of(key, partitions),
                    by_hash,
                    "{key} of {partitions}"
                );
            }
        }
    }

    #[test]
    fn every_slot_belongs_to_exactly_one_partition() {
        for partitions in [1u32, 3, 16, 100, 256] {
            let mut seen = vec![0u8; SLOTS as usize];
            for p in 0..partitions {
                for slot in slots_of(p, partitions) {
                    assert_eq!(partition_of_slot(slot, partitions), p);
                    seen[usize::from(slot)] += 1;
                }
            }
            assert!(seen.iter().all(|n| *n == 1), "{partitions} partitions");
        }
    }

    fn config(nodes: usize, replicas: usize, partitions: u32) -> Config {
        let mut text = format!("[cluster]\nreplicas = {replicas}\npartitions = {partitions}\n");
        for n in 1..=nodes {
            text.push_str(&format!(
                "[[nodes]]\nid='n{n}'\nlisten='127.0.0.1:{}'\npeer='127.0.0.1:{}'\ndata_dir='d{n}'\n",
                7000 + n,
                7100 + n
            ));
        }
        Config::parse(&text).expect("config")
    }

    fn layout(nodes: usize, replicas: usize, partitions: u32) -> Layout {
        Layout::initial(&config(nodes, replicas, partitions))
    }

    /// Pins the partition hash and a few layouts: a dependency bump must not move keys silently.
    #[test]
    fn placements_are_pinned() {
        let keys = ["alice", "bob", "dm:alice:bob", "g:team", "u42"];
        let parts: Vec<u32> = keys.iter().map(|k| partition_of(k, 256)).collect();
        assert_eq!(parts, PINNED_PARTITIONS.to_vec());
        let l = layout(3, 3, 256);
        let ids = |p| -> Vec<&str> { l.replicas(p).iter().map(NodeId::as_str).collect() };
        assert_eq!(ids(0), PINNED_REPLICAS_0.to_vec());
        assert_eq!(ids(1), PINNED_REPLICAS_1.to_vec());
    }

    const PINNED_PARTITIONS: [u32; 5] = [7, 84, 17, 213, 90];
    const PINNED_REPLICAS_0: [&str; 3] = ["n2", "n1", "n3"];
    const PINNED_REPLICAS_1: [&str; 3] = ["n1", "n3", "n2"];

    #[test]
    fn replicas_are_distinct_and_capped_by_the_node_count() {
        let l = layout(3, 5, 64);
        for p in 0..64 {
            let mut r = l.replicas(p).to_vec();
            assert_eq!(r.len(), 3);
            r.sort();
            r.dedup();
            assert_eq!(r.len(), 3, "partition {p}");
        }
        let single = layout(1, 3, 8);
        assert!((0..8).all(|p| single.replicas(p).len() == 1));
        assert_eq!(
            single
                .partitions_of(&NodeId::parse("n1").expect("id"))
                .count(),
            8 + 1,
            "and the metadata group"
        );
        assert_eq!(
            l.replicas(64).len(),
            3,
            "the metadata group is on every member"
        );
        assert!(l.replicas(65).is_empty());
    }

    /// Preferred leaders (the first replica) and replicas per node.
    fn spread(l: &Layout, partitions: u32) -> (HashMap<String, u32>, HashMap<String, u32>) {
        let mut preferred: HashMap<String, u32> = HashMap::new();
        let mut held: HashMap<String, u32> = HashMap::new();
        for p in 0..partitions {
            *preferred.entry(l.replicas(p)[0].to_string()).or_default() += 1;
            for r in l.replicas(p) {
                *held.entry(r.to_string()).or_default() += 1;
            }
        }
        (preferred, held)
    }

    #[test]
    fn leaders_and_replicas_spread_over_nodes() {
        let (preferred, _) = spread(&layout(3, 3, 256), 256);
        assert_eq!(preferred.len(), 3);
        assert!(preferred.values().all(|c| *c > 70), "{preferred:?}");
        // few partitions: every node leads some (they once all fell on one node)
        for nodes in [3, 4] {
            let (preferred, held) = spread(&layout(nodes, 3, 16), 16);
            assert_eq!(preferred.len(), nodes, "{preferred:?}");
            assert!(held.values().all(|c| *c >= 8), "{held:?}");
        }
        let (preferred, held) = spread(&layout(5, 3, 256), 256);
        assert!(preferred.values().all(|c| *c >= 40), "{preferred:?}");
        assert!(held.values().all(|c| (130..=180).contains(c)), "{held:?}");
        let keys: Vec<u32> = (0..10_000)
            .map(|i| partition_of(&format!("user{i}"), 256))
            .collect();
        let used: std::collections::HashSet<u32> = keys.iter().copied().collect();
        assert_eq!(used.len(), 256, "every partition gets keys");
    }
}
