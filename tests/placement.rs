//! Placement with replication: the partition count is fixed once a node holds data.

mod common;

use common::{config_text, TestNode};
use rookery::config::Config;
use rookery::Node;

/// Starts a node on `dir` with `extra` config in its own actix system; the start error, if any.
fn start_error(extra: &str, dir: &std::path::Path) -> Option<String> {
    let config = Config::parse(&config_text(extra, "127.0.0.1:0", dir)).expect("config");
    actix_rt::System::new().block_on(async move {
        match Node::start(config, None) {
            Ok(node) => {
                node.run(async {}).await.expect("clean stop");
                None
            }
            Err(e) => Some(e.to_string()),
        }
    })
}

#[test]
fn a_changed_partition_count_is_refused() {
    let mut node = TestNode::start();
    node.shutdown();
    let refused = start_error("[cluster]\npartitions = 128", &node.dir).expect("refused");
    assert!(
        refused.contains("`cluster.partitions` is 128") && refused.contains("created with 256"),
        "{refused}"
    );
    // the same count as before starts, and so does the old data
    assert_eq!(start_error("[cluster]\npartitions = 256", &node.dir), None);
    node.restart();
}

#[test]
fn replication_keys_are_validated() {
    for (extra, key) in [
        ("[cluster]\npartitions = 0", "cluster.partitions"),
        ("[cluster]\npartitions = 70000", "cluster.partitions"),
        ("[cluster]\nreplicas = 0", "cluster.replicas"),
        (
            "[cluster]\nelection_timeout_ms = 0",
            "cluster.election_timeout_ms",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Config::parse(&config_text(extra, "127.0.0.1:0", dir.path()))
            .expect_err("invalid config");
        assert!(err.contains(key), "{extra}: {err}");
    }
}
