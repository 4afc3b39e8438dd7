//! `rookery-bench store`: a message's store work alone, without a server, a socket or an actor.
//!
//! One thread posts `messages` messages round-robin over `convs` direct conversations through the same
//! code a conversation actor runs for a `send`: the state core ([`ConvState::apply`], which looks the
//! `cid` up in sled) and [`Store::write_conv`] (the dedupe entry and the message, two sled inserts), and
//! every `per_flush` messages it waits for the group-commit flusher, as the `sent` answers of one flush
//! window do. The process's CPU per message (this thread, the flusher and sled's IO pool together) is the
//! floor the store puts under a node's CPU per message (issue 18), whatever the rest of the node does.

use std::time::Instant;

use anyhow::Context as _;
use rookery::config::{Durability, StoreConfig};
use rookery::error::ChatResult;
use rookery::ids::{Cid, ConvId, UserId};
use rookery::state::conv::{ConvCommand, ConvState, History, Rules, Write};
use rookery::store::{ConvHistory, Store};
use serde_json::{json, Value};

/// The thread's own CPU seconds (`/proc/thread-self/stat`).
fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    ticks_to_seconds(&stat)
}

/// utime + stime of a `/proc/.../stat` line, in seconds (ticks of 1/100 s).
fn ticks_to_seconds(stat: &str) -> Option<f64> {
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn process_cpu_seconds() -> Option<f64> {
    ticks_to_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// What a `store` run leaves out, to measure what it costs (a what-if: without the dedupe entry a resent
/// `cid` would be stored twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Without {
    /// Nothing: a `send`'s store work as the node does it.
    Nothing,
    /// The dedupe lookup (the `cid` entry is still written).
    DedupeLookup,
    /// The dedupe entry's insert (the lookup still runs, and misses).
    DedupeEntry,
    /// Both: the message's insert alone.
    Dedupe,
}

impl Without {
    fn skips_lookup(self) -> bool {
        matches!(self, Without::DedupeLookup | Without::Dedupe)
    }

    fn skips_entry(self) -> bool {
        matches!(self, Without::DedupeEntry | Without::Dedupe)
    }
}

pub fn run(
    messages: u64,
    convs: usize,
    per_flush: u64,
    durability: Durability,
    without: Without,
) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let config = StoreConfig {
        durability,
        ..StoreConfig::default()
    };
    let hist = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("flush", "flush"))?;
    let store = Store::open(dir.path(), &config, hist.clone()).context("open the store")?;
    let rules = Rules {
        dm_requires_friendship: false,
        max_group_members: 1000,
        recall_window_ms: 0,
        edit_window_ms: 0,
    };
    let mut states = Vec::with_capacity(convs);
    let mut senders = Vec::with_capacity(convs);
    for i in 0..convs {
        let a = UserId::parse(&format!("sa{i}")).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let b = UserId::parse(&format!("sb{i}")).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let conv = ConvId::direct(&a, &b).context("a direct conversation")?;
        states.push(store.conv_state(&conv)?);
        senders.push(a);
    }
    let wait_flush = |store: &Store| {
        let (tx, rx) = std::sync::mpsc::channel();
        store.flusher().after_flush(move || {
            let _ = tx.send(());
        });
        let _ = rx.recv();
    };
    let (mut core_s, mut write_s, mut flush_wait_s) = (0.0, 0.0, 0.0);
    let cpu_before = process_cpu_seconds();
    let thread_before = thread_cpu_seconds();
    let started = Instant::now();
    for n in 0..messages {
        let i = usize::try_from(n % convs as u64).unwrap_or(0);
        let state: &mut ConvState = &mut states[i];
        let conv = state.id.clone();
        let body = serde_json::value::RawValue::from_string(format!(
            r#"{{"t":{n},"text":"hello, this is a benchmark message"}}"#
        ))?;
        let cmd = ConvCommand::Post {
            from: senders[i].clone(),
            cid: Cid::parse(&format!("c{n}")).map_err(|e| anyhow::anyhow!("{e:?}"))?,
            ts: 1_700_000_000_000 + n,
            body,
            reply_to: None,
            mentions: None,
        };
        let t0 = Instant::now();
        let mut writes = Vec::new();
        let history = ConvHistory {
            store: &store,
            conv: &conv,
        };
        let lookups: &dyn History = if without.skips_lookup() {
            &NoHistory
        } else {
            &history
        };
        state
            .apply(cmd, &rules, lookups, &mut writes)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if without.skips_entry() {
            writes.retain(|w| !matches!(w, Write::Cid { .. }));
        }
        let t1 = Instant::now();
        store.write_conv(&conv, &writes)?;
        let t2 = Instant::now();
        core_s += (t1 - t0).as_secs_f64();
        write_s += (t2 - t1).as_secs_f64();
        if (n + 1) % per_flush == 0 {
            wait_flush(&store);
            flush_wait_s += t2.elapsed().as_secs_f64();
        }
    }
    wait_flush(&store);
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds()
        .zip(cpu_before)
        .map(|(a, b)| a - b)
        .unwrap_or(0.0);
    let thread = thread_cpu_seconds()
        .zip(thread_before)
        .map(|(a, b)| a - b)
        .unwrap_or(0.0);
    let flushes = hist.get_sample_count();
    store.close()?;
    let per_msg = |s: f64| (s / messages as f64 * 1e7).round() / 10.0;
    Ok(json!({
        "workload": "store",
        "messages": messages,
        "convs": convs,
        "per_flush": per_flush,
        "without": format!("{without:?}"),
        "durability": match durability { Durability::Sync => "sync", Durability::Os => "os" },
        "flushes": flushes,
        "msgs_per_s": (messages as f64 / wall).round(),
        "cpu_us_per_msg": {
            "process": per_msg(cpu),
            "posting_thread": per_msg(thread),
            "flusher_and_sled_pool": per_msg(cpu - thread),
        },
        "wall_us_per_msg": {
            "state_core_and_cid_lookup": per_msg(core_s),
            "write_conv": per_msg(write_s),
            "waiting_for_flushes": per_msg(flush_wait_s),
        },
    }))
}

/// A history with nothing in it: every dedupe lookup misses without asking sled.
struct NoHistory;

impl History for NoHistory {
    fn cid(&self, _: &UserId, _: &Cid) -> ChatResult<Option<(u64, u64)>> {
        Ok(None)
    }

    fn message(&self, _: u64) -> ChatResult<Option<String>> {
        Ok(None)
    }

    fn reactions_of(&self, _: u64, _: &UserId) -> ChatResult<Vec<String>> {
        Ok(Vec::new())
    }

    fn reaction_count(&self, _: u64, _: &str) -> ChatResult<u64> {
        Ok(0)
    }
}
