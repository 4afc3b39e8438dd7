//! Where a key lives with replication: every user, conversation and group key hashes to one of
//! `cluster.partitions` partitions, and each partition is kept on `cluster.replicas` distinct nodes taken
//! from the consistent-hash ring (the ring's replication candidates for the partition's point, in ring
//! order; the first is the preferred leader).
//!
//! Both steps are pure functions of the config: every node computes the same [`Layout`]. The partition
//! hash (FNV-1a 64 of the key's bytes, modulo the partition count) is pinned by a unit test so that a
//! dependency bump can move no key to another partition; the partition count itself is fixed once a node
//! holds data (the store refuses another value, see `Store::fix_partitions`).

use std::hash::Hasher;

use fnv::FnvHasher;

use super::ring::Ring;
use crate::config::Config;
use crate::ids::NodeId;

/// A partition's number, `0..cluster.partitions`.
pub type PartitionId = u32;

/// The partition of `key` (a user id or a conversation id) among `partitions`.
pub fn partition_of(key: &str, partitions: u32) -> PartitionId {
    let mut h = FnvHasher::default();
    h.write(key.as_bytes());
    let p = h.finish() % u64::from(partitions.max(1));
    // the remainder is below `partitions`, a u32
    u32::try_from(p).unwrap_or(0)
}

/// Every partition's replicas, computed once from the config.
#[derive(Debug, Clone)]
pub struct Layout {
    partitions: u32,
    replicas: Vec<Vec<NodeId>>,
}

impl Layout {
    pub fn new(config: &Config, ring: &Ring) -> Layout {
        let count = config.cluster.replicas.min(config.nodes.len()).max(1);
        let replicas = (0..config.cluster.partitions)
            .map(|p| ring.candidates(&partition_point(p)).take(count).collect())
            .collect();
        Layout {
            partitions: config.cluster.partitions,
            replicas,
        }
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn partition(&self, key: &str) -> PartitionId {
        partition_of(key, self.partitions)
    }

    /// The nodes that keep partition `p`, the preferred leader first.
    pub fn replicas(&self, p: PartitionId) -> &[NodeId] {
        usize::try_from(p)
            .ok()
            .and_then(|i| self.replicas.get(i))
            .map_or(&[], Vec::as_slice)
    }

    /// The partitions `node` keeps a replica of.
    pub fn partitions_of<'a>(&'a self, node: &'a NodeId) -> impl Iterator<Item = PartitionId> + 'a {
        (0..self.partitions).filter(move |p| self.replicas(*p).contains(node))
    }
}

/// The point on the ring a partition's replicas are taken from.
fn partition_point(p: PartitionId) -> String {
    format!("partition/{p}")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

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
        let config = config(nodes, replicas, partitions);
        Layout::new(&config, &Ring::new(&config))
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
    const PINNED_REPLICAS_0: [&str; 3] = ["n3", "n2", "n1"];
    const PINNED_REPLICAS_1: [&str; 3] = ["n3", "n1", "n2"];

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
            8
        );
        assert!(l.replicas(64).is_empty());
    }

    #[test]
    fn leaders_and_replicas_spread_over_nodes() {
        let l = layout(3, 3, 256);
        let mut preferred: HashMap<String, u32> = HashMap::new();
        for p in 0..256 {
            *preferred.entry(l.replicas(p)[0].to_string()).or_default() += 1;
        }
        assert_eq!(preferred.len(), 3);
        assert!(preferred.values().all(|c| *c > 50), "{preferred:?}");
        let keys: Vec<u32> = (0..10_000)
            .map(|i| partition_of(&format!("user{i}"), 256))
            .collect();
        let used: std::collections::HashSet<u32> = keys.iter().copied().collect();
        assert_eq!(used.len(), 256, "every partition gets keys");
    }
}
