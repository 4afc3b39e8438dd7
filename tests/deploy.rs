//! The ops kit in `deploy/`: every metric the Grafana dashboard queries exists on a real node's `/metrics`
//! (with the labels it groups by), Prometheus scrapes every node of the three-node example, and the systemd
//! unit's command line starts a real node that SIGTERM stops cleanly, and a node runs with transparent huge
//! pages off.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

fn deploy(path: &str) -> String {
    let full = format!("{}/deploy/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// Every PromQL expression of the dashboard.
fn dashboard_exprs() -> Vec<String> {
    let dash: Value =
        serde_json::from_str(&deploy("grafana/rookery.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    let variables = dash["templating"]["list"].as_array().expect("variables");
    for v in variables {
        if let Some(q) = v["query"]["query"].as_str() {
            exprs.push(q.to_string());
        }
    }
    exprs
}

/// The `rookery_*` names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("rookery_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.insert(expr[start..end].to_string());
        i = end;
    }
    names
}

/// The label names in `by (...)` clauses and `{label=...}` matchers.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for part in expr.split("by (").skip(1) {
        let inside = part.split(')').next().unwrap_or("");
        labels.extend(inside.split(',').map(|l| l.trim().to_string()));
    }
    for part in expr.split('{').skip(1) {
        let inside = part.split('}').next().unwrap_or("");
        for matcher in inside.split(',') {
            if let Some((name, _)) = matcher.split_once(['=', '!']) {
                labels.insert(name.trim().trim_end_matches('~').to_string());
            }
        }
    }
    labels.retain(|l| !l.is_empty() && l != "le" && l != "instance" && l != "job");
    labels
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_exists_on_metrics() {
    // two nodes, so the per-peer metrics exist too
    let cluster = Cluster::start(2, "").await;
    let (status, text) = http_get(&cluster.url(0, "/metrics")).await;
    assert_eq!(status, 200);
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut checked = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no rookery metric in {expr}");
        for name in names {
            let lines: Vec<&&str> = samples
                .iter()
                .filter(|l| {
                    l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))
                })
                .collect();
            assert!(!lines.is_empty(), "{name} (in {expr}) is not on /metrics");
            for label in label_names(expr) {
                assert!(
                    lines.iter().any(|l| l.contains(&format!("{label}=\""))),
                    "{name} has no label {label} (in {expr})"
                );
            }
            checked.insert(name);
        }
    }
    for family in [
        "rookery_ws_connections",
        "rookery_messages_accepted_total",
        "rookery_send_seconds_bucket",
        "rookery_pushes_total",
        "rookery_store_flush_seconds_bucket",
        "rookery_peer_link_state",
        "rookery_webhook_outbox_events",
        "rookery_webhook_outbox_age_seconds",
    ] {
        assert!(checked.contains(family), "the dashboard shows {family}");
    }
}

#[test]
fn prometheus_scrapes_every_node_of_the_three_node_example() {
    let example = std::fs::read_to_string(format!("{}/cluster-3.toml", env!("CARGO_MANIFEST_DIR")))
        .expect("cluster-3.toml");
    let config = rookery::Config::parse(&example).expect("the example parses");
    let scrape = deploy("prometheus/prometheus.yml");
    assert!(scrape.contains("metrics_path: /metrics"));
    let targets: Vec<&str> = scrape
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- targets: [\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    let listens: Vec<&str> = config.nodes.iter().map(|n| n.listen.as_str()).collect();
    assert_eq!(targets, listens);
}

#[tokio::test]
async fn the_systemd_unit_starts_a_node_that_sigterm_stops_cleanly() {
    let unit = deploy("systemd/rookery@.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .to_string()
    };
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(value("Restart"), "on-failure");
    let exec = value("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/rookery"));
    // the unit's own arguments, with this test's config and %i as node n1
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = dir.path().join("cluster.toml");
    std::fs::write(
        &config,
        config_text("", &format!("127.0.0.1:{port}"), &dir.path().join("data")),
    )
    .expect("config");
    let args: Vec<String> = words
        .map(|w| match w {
            "/etc/rookery/cluster.toml" => config.display().to_string(),
            "%i" => "n1".to_string(),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(args[0], "--config");
    assert_eq!(args[2..], ["--node".to_string(), "n1".to_string()]);
    // the node's log goes to a file, printed if the node is not there when asked (CI saw its port
    // accept a connection and then refuse the next one once)
    let log_path = dir.path().join("node.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rookery"))
        .args(&args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    let gone = |child: &mut std::process::Child, what: &str| -> ! {
        let status = child.try_wait();
        let _ = child.kill();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        panic!("{what}; the node: {status:?}; its log:\n{log}");
    };
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        if std::time::Instant::now() >= deadline {
            gone(&mut child, "the node did not start");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(http_get(&url))
        .catch_unwind()
        .await
    {
        Ok((status, _)) => assert_eq!(status, 200),
        Err(_) => gone(&mut child, "GET /healthz failed"),
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "SIGTERM ends a node with status 0: {status:?}"
    );
}

/// A node turns transparent huge pages off for its process: with them on, the first write to each new
/// 2 MiB of heap stalled a thread for 30 to 60 ms on the virtual machines measured (src/main.rs).
#[test]
fn a_node_runs_with_transparent_huge_pages_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_node_config(tmp.path(), "");
    let mut node = NodeProcess::start(&config);
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.child.id()))
        .expect("read the node's /proc status");
    node.kill9();
    // `THP_enabled` is in /proc/PID/status since Linux 5.0
    let line = status
        .lines()
        .find(|l| l.starts_with("THP_enabled:"))
        .unwrap_or_else(|| panic!("no THP_enabled line in /proc/PID/status:\n{status}"));
    assert_eq!(
        line.split_whitespace().nth(1),
        Some("0"),
        "the node runs with transparent huge pages on: {line}"
    );
}
