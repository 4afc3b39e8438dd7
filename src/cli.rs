//! `rookery cluster status|add|remove`: the membership calls of the HTTP API (`GET /v1/admin/cluster`,
//! `POST /v1/admin/nodes`, `DELETE /v1/admin/nodes/ID`) from the command line, with the config's admin key,
//! showing the partitions' progress until the layout has settled.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::config::Config;

/// What `rookery cluster` was asked.
#[derive(Debug, Clone)]
pub enum ClusterAction {
    Status,
    Add {
        id: String,
        listen: Option<String>,
        peer: Option<String>,
    },
    Remove {
        id: String,
    },
}

/// How long to show progress at most before giving up (the change goes on in the cluster).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const POLL: Duration = Duration::from_millis(500);

/// Runs `action` against the member at `via` (a client address), or the first of the config's nodes
/// that answers. With `wait`, shows progress until nothing moves (and the node is active, or gone).
pub fn cluster(
    config: &Config,
    action: &ClusterAction,
    via: Option<&str>,
    wait: bool,
) -> anyhow::Result<()> {
    let skip = match action {
        ClusterAction::Add { id, .. } => Some(id.as_str()),
        _ => None,
    };
    let candidates: Vec<String> = match via {
        Some(v) => vec![v.to_owned()],
        None => config
            .nodes
            .iter()
            .filter(|n| Some(n.id.as_str()) != skip)
            .map(|n| n.listen.clone())
            .collect(),
    };
    let admin = Admin::connect(config, &candidates)?;
    match action {
        ClusterAction::Status => {
            let view = admin.get()?;
            print!("{}", status_table(&view));
            Ok(())
        }
        ClusterAction::Add { id, listen, peer } => {
            let own = config.nodes.iter().find(|n| n.id == *id);
            let listen = listen
                .clone()
                .or_else(|| own.map(|n| n.listen.clone()))
                .context("--listen is needed (the config has no [[nodes]] entry for this id)")?;
            let peer = peer
                .clone()
                .or_else(|| own.map(|n| n.peer.clone()))
                .context("--peer is needed (the config has no [[nodes]] entry for this id)")?;
            let body = serde_json::json!({"id": id, "listen": listen, "peer": peer});
            admin.send("POST", "/v1/admin/nodes", Some(body))?;
            eprintln!("{id} added; start it with `rookery --config F --node {id} --join <a member's peer address>` if it is not running");
            if wait {
                admin.progress(|view| {
                    node_state(view, id).as_deref() == Some("active") && moving(view) == 0
                })?;
                eprintln!("{id} is active and holds its share of the partitions");
            }
            Ok(())
        }
        ClusterAction::Remove { id } => {
            admin.send("DELETE", &format!("/v1/admin/nodes/{id}"), None)?;
            eprintln!("{id} is leaving: its partitions move to the other nodes");
            if wait {
                admin.progress(|view| node_state(view, id).is_none() && moving(view) == 0)?;
                eprintln!("{id} holds nothing and is no longer a member: it may be stopped");
            }
            Ok(())
        }
    }
}

struct Admin {
    agent: ureq::Agent,
    base: String,
    key: String,
}

impl Admin {
    /// The first candidate that answers `GET /v1/admin/cluster`.
    fn connect(config: &Config, candidates: &[String]) -> anyhow::Result<Admin> {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        let mut errors = Vec::new();
        for c in candidates {
            let admin = Admin {
                agent: agent.clone(),
                base: format!("http://{c}"),
                key: config.auth.admin_key.clone(),
            };
            match admin.get() {
                Ok(_) => return Ok(admin),
                Err(e) => errors.push(format!("{c}: {e:#}")),
            }
        }
        bail!("no member answered ({})", errors.join("; "))
    }

    fn get(&self) -> anyhow::Result<Value> {
        self.send("GET", "/v1/admin/cluster", None)
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let req = self
            .agent
            .request(method, &format!("{}{path}", self.base))
            .set("Authorization", &format!("Bearer {}", self.key));
        let answer = match body {
            Some(b) => req
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => req.call(),
        };
        match answer {
            Ok(r) => Ok(serde_json::from_str(&r.into_string()?)?),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                bail!("{method} {path}: {code}: {message}")
            }
            Err(e) => Err(e).with_context(|| format!("{method} {path}")),
        }
    }

    /// Shows a progress bar of the partitions moving until `done`.
    fn progress(&self, done: impl Fn(&Value) -> bool) -> anyhow::Result<()> {
        let started = Instant::now();
        let tty = std::io::stderr().is_terminal();
        let mut most = 0u64;
        let mut last = String::new();
        loop {
            let view = self.get()?;
            let left = moving(&view);
            most = most.max(left);
            let line = progress_line(most, left, started.elapsed());
            if tty {
                eprint!("\r{line}");
                let _ = std::io::stderr().flush();
            } else if line != last {
                eprintln!("{line}");
            }
            last = line;
            if done(&view) {
                if tty {
                    eprintln!();
                }
                return Ok(());
            }
            if started.elapsed() > PROGRESS_TIMEOUT {
                bail!("still moving after {PROGRESS_TIMEOUT:?}");
            }
            std::thread::sleep(POLL);
        }
    }
}

fn moving(view: &Value) -> u64 {
    view["moving"].as_u64().unwrap_or(0)
}

fn node_state(view: &Value, id: &str) -> Option<String> {
    view["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["state"].as_str().map(str::to_owned))
}

/// `[#########...........] 12/40 partitions moved, 28 moving (35 s)`.
pub fn progress_line(most: u64, left: u64, took: Duration) -> String {
    const WIDTH: u64 = 30;
    let moved = most.saturating_sub(left);
    let filled = (moved * WIDTH).checked_div(most).unwrap_or(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '.' })
        .collect();
    format!(
        "[{bar}] {moved}/{most} partitions moved, {left} moving ({} s)",
        took.as_secs()
    )
}

/// `GET /v1/admin/cluster` as a table: the members, what each leads and keeps.
pub fn status_table(view: &Value) -> String {
    let partitions = view["partitions"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "epoch {}, {} partitions, {} moving\n",
        view["epoch"],
        partitions.len(),
        moving(view)
    );
    out.push_str(&format!(
        "{:<12} {:<8} {:<4} {:<22} {:<22} {:>5} {:>8}\n",
        "ID", "STATE", "UP", "LISTEN", "PEER", "LEADS", "REPLICAS"
    ));
    for n in view["nodes"].as_array().cloned().unwrap_or_default() {
        let id = n["id"].as_str().unwrap_or_default();
        let leads = partitions.iter().filter(|p| p["leader"] == id).count();
        let keeps = partitions
            .iter()
            .filter(|p| {
                p["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|x| x == id))
            })
            .count();
        out.push_str(&format!(
            "{:<12} {:<8} {:<4} {:<22} {:<22} {:>5} {:>8}\n",
            id,
            n["state"].as_str().unwrap_or_default(),
            if n["up"] == true { "yes" } else { "no" },
            n["listen"].as_str().unwrap_or_default(),
            n["peer"].as_str().unwrap_or_default(),
            leads,
            keeps
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_bar_fills_as_partitions_move() {
        let line = progress_line(40, 30, Duration::from_secs(7));
        assert!(
            line.starts_with("[#######......................."),
            "{line}"
        );
        assert!(line.contains("10/40 partitions moved, 30 moving (7 s)"));
        assert!(progress_line(0, 0, Duration::ZERO).starts_with("[##############################]"));
    }

    #[test]
    fn the_status_table_counts_leads_and_replicas() {
        let view = serde_json::json!({
            "epoch": 4, "moving": 1,
            "nodes": [
                {"id": "n1", "listen": "127.0.0.1:1", "peer": "127.0.0.1:2", "up": true, "state": "active"},
                {"id": "n2", "listen": "127.0.0.1:3", "peer": "127.0.0.1:4", "up": false, "state": "joining"}
            ],
            "partitions": [
                {"id": 0, "replicas": ["n1", "n2"], "leader": "n1"},
                {"id": 1, "replicas": ["n1"], "leader": "n1"}
            ]
        });
        let table = status_table(&view);
        assert!(
            table.starts_with("epoch 4, 2 partitions, 1 moving\n"),
            "{table}"
        );
        let n1 = table.lines().find(|l| l.starts_with("n1")).expect("n1");
        assert!(
            n1.contains("active") && n1.ends_with("    2        2"),
            "{n1}"
        );
        let n2 = table.lines().find(|l| l.starts_with("n2")).expect("n2");
        assert!(
            n2.contains("joining") && n2.contains(" no ") && n2.ends_with("    0        1"),
            "{n2}"
        );
    }
}
