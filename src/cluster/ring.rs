//! The consistent-hash ring over a set of nodes (the members that hold data; see `cluster::membership`).
//!
//! The ring is built from the node ids sorted, with `vnodes` points each and a fixed hasher (FNV-1a), so
//! every node computes the same owner for every key.

use consistent_hash_ring::RingBuilder;
use fnv::FnvBuildHasher;

use crate::config::Config;
use crate::ids::NodeId;

pub struct Ring {
    ring: consistent_hash_ring::Ring<NodeId, FnvBuildHasher>,
}

impl Ring {
    pub fn new(config: &Config) -> Ring {
        let mut nodes: Vec<&crate::config::NodeConfig> = config.nodes.iter().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<NodeId> = nodes
            .iter()
            .filter_map(|n| NodeId::parse(&n.id).ok())
            .collect();
        Ring::from_ids(ids, config.cluster.vnodes)
    }

    /// The ring over `ids` (in any order) with `vnodes` points each.
    pub fn from_ids(mut ids: Vec<NodeId>, vnodes: usize) -> Ring {
        ids.sort();
        let ring = RingBuilder::new(FnvBuildHasher::default())
            .vnodes(vnodes)
            .nodes_iter(ids)
            .build();
        Ring { ring }
    }

    /// The node that owns `key` (a user id or conversation id).
    pub fn owner(&self, key: &str) -> &NodeId {
        self.ring.get(key)
    }

    /// Distinct nodes in ring order from `key`'s point: the replication candidates for `key`.
    pub fn candidates<'a>(&'a self, key: &'a str) -> impl Iterator<Item = NodeId> + 'a {
        self.ring.replicas(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ids: &[&str]) -> Config {
        let mut text = String::new();
        for id in ids {
            // each node's addresses follow from its id, wherever it stands in the file
            let n: u16 = id.trim_start_matches('n').parse().expect("n<digit>");
            text.push_str(&format!(
                "[[nodes]]\nid='{id}'\nlisten='127.0.0.1:{}'\npeer='127.0.0.1:{}'\ndata_dir='d{n}'\n",
                7000 + n,
                7100 + n
            ));
        }
        Config::parse(&text).expect("config")
    }

    /// Pins placements so a dependency bump cannot move ownership silently.
    #[test]
    fn placements_are_pinned() {
        let ring = Ring::new(&config(&["n1", "n2", "n3"]));
        let placed: Vec<(&str, &str)> = ["alice", "bob", "carol", "dm:alice:bob", "g:team", "u42"]
            .iter()
            .map(|k| (*k, ring.owner(k).as_str()))
            .collect();
        assert_eq!(placed, PINNED.to_vec());
    }

    const PINNED: [(&str, &str); 6] = [
        ("alice", "n3"),
        ("bob", "n1"),
        ("carol", "n3"),
        ("dm:alice:bob", "n3"),
        ("g:team", "n3"),
        ("u42", "n2"),
    ];

    #[test]
    fn order_of_nodes_in_the_file_does_not_matter() {
        let a = Ring::new(&config(&["n1", "n2", "n3"]));
        let b = Ring::new(&config(&["n3", "n1", "n2"]));
        for i in 0..1000 {
            let k = format!("user{i}");
            assert_eq!(a.owner(&k), b.owner(&k));
        }
    }

    #[test]
    fn keys_spread_over_nodes() {
        let ring = Ring::new(&config(&["n1", "n2", "n3"]));
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            *counts
                .entry(ring.owner(&format!("user{i}")).clone())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|c| *c > 600), "{counts:?}");
    }
}
