//! Every Prometheus metric of a node, defined in one place with help text and unit suffix.
//!
//! Metrics live in a per-node [`Metrics`] (its own registry), so several nodes in one test process do not
//! mix their numbers. Label values are resolved once here, not per frame.

use std::collections::HashMap;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cluster::remote::PeerFrame;
use crate::error::ErrorCode;
use crate::net::protocol::{CLIENT_FRAME_KINDS, SERVER_FRAME_KINDS};

/// Actor kinds counted by `rookery_actors`.
#[derive(Debug, Clone, Copy)]
pub enum ActorKind {
    Session,
    User,
    Conversation,
}

pub struct Metrics {
    registry: Registry,
    pub ws_connections: IntGauge,
    actors: [IntGauge; 3],
    frames_in: HashMap<&'static str, IntCounter>,
    frames_in_other: IntCounter,
    frames_out: HashMap<&'static str, IntCounter>,
    errors: HashMap<ErrorCode, IntCounter>,
    pub messages_accepted: IntCounter,
    pub pushes: IntCounter,
    pub repushes: IntCounter,
    pub slow_consumer_disconnects: IntCounter,
    pub media_bytes_received: IntCounter,
    pub media_stored: IntCounter,
    pub admin_auth_failures: IntCounter,
    pub webhook_outbox_events: IntGauge,
    pub webhook_outbox_age_seconds: Gauge,
    pub webhook_requests_ok: IntCounter,
    pub webhook_requests_failed: IntCounter,
    pub webhook_events_delivered: IntCounter,
    pub webhook_request_seconds: Histogram,
    before_send_answers: HashMap<&'static str, IntCounter>,
    pub before_send_seconds: Histogram,
    pub send_seconds: Histogram,
    pub store_flush_seconds: Histogram,
    peer_link_state: IntGaugeVec,
    peer_envelopes: IntCounterVec,
    peer_bytes: IntCounterVec,
    remote_call_seconds: HistogramVec,
    /// Raft groups (partitions) this node keeps a replica of.
    pub raft_partitions: IntGauge,
    /// Raft groups this node leads.
    pub raft_partitions_led: IntGauge,
    pub raft_leader_changes: IntCounter,
    /// One round of the Raft driver: persist and sync the log, hand out messages and commits.
    pub raft_poll_seconds: Histogram,
    /// From a proposal to its application on the node that made it (commit on a majority included).
    pub raft_proposal_seconds: Histogram,
    /// Requests answered `unavailable` because no leader of their key's partition was ready in time.
    pub unrouted: IntCounter,
    /// Per partition kept here: 1 if this node leads it, its term, its commit and applied index.
    pub raft_partition: RaftPartitionMetrics,
    pub raft_snapshots_sent: IntCounter,
    pub raft_snapshots_installed: IntCounter,
    /// The epoch of the membership record this node applied.
    pub membership_epoch: IntGauge,
    /// Partitions whose replicas are not where the membership wants them (as this node's record says).
    pub partitions_moving: IntGauge,
    /// Bytes of partition snapshots this node sent to new or lagging replicas.
    pub move_bytes: IntCounter,
    /// From the first change of a partition's replicas that this node led to its replicas settled.
    pub move_seconds: Histogram,
}

/// Per-partition Raft gauges (label `partition`).
pub struct RaftPartitionMetrics {
    pub leader: IntGaugeVec,
    pub term: IntGaugeVec,
    pub commit: IntGaugeVec,
    pub applied: IntGaugeVec,
}

impl RaftPartitionMetrics {
    fn set(vec: &IntGaugeVec, partition: u32, value: u64) {
        vec.with_label_values(&[&partition.to_string()])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }

    pub fn set_leader(&self, partition: u32, local: bool, term: u64) {
        Self::set(&self.leader, partition, u64::from(local));
        Self::set(&self.term, partition, term);
    }

    pub fn set_commit(&self, partition: u32, index: u64) {
        Self::set(&self.commit, partition, index);
    }

    pub fn set_applied(&self, partition: u32, index: u64) {
        Self::set(&self.applied, partition, index);
    }
}

/// One peer link's metrics, resolved once per peer.
#[derive(Clone)]
pub struct PeerMetrics {
    /// 0 down, 1 up, 2 refused (the peer's cluster config differs).
    pub state: IntGauge,
    /// By frame kind, indexed like `PeerFrame::KINDS`.
    pub envelopes_sent: Vec<IntCounter>,
    pub envelopes_received: Vec<IntCounter>,
    pub bytes_sent: IntCounter,
    pub bytes_received: IntCounter,
    pub call_seconds: Histogram,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Metric definitions are static; a failure here is a programming error caught by the unit test.
    r.unwrap_or_else(|e| panic!("metric definition: {e}"))
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| must(registry.register(c));

        let ws_connections = must(IntGauge::new(
            "rookery_ws_connections",
            "Open WebSocket connections (authenticated or not).",
        ));
        reg(Box::new(ws_connections.clone()));

        let actors_vec = must(IntGaugeVec::new(
            Opts::new("rookery_actors", "Live actors on this node, by kind."),
            &["kind"],
        ));
        reg(Box::new(actors_vec.clone()));
        let actors =
            ["session", "user", "conversation"].map(|k| actors_vec.with_label_values(&[k]));

        let frames_in_vec = must(IntCounterVec::new(
            Opts::new(
                "rookery_frames_in_total",
                "Client frames received, by type (`invalid` for unparsable).",
            ),
            &["type"],
        ));
        reg(Box::new(frames_in_vec.clone()));
        let frames_in = CLIENT_FRAME_KINDS
            .iter()
            .map(|k| (*k, frames_in_vec.with_label_values(&[k])))
            .collect();
        let frames_in_other = frames_in_vec.with_label_values(&["invalid"]);

        let frames_out_vec = must(IntCounterVec::new(
            Opts::new(
                "rookery_frames_out_total",
                "Frames sent to clients, by type.",
            ),
            &["type"],
        ));
        reg(Box::new(frames_out_vec.clone()));
        let frames_out = SERVER_FRAME_KINDS
            .iter()
            .map(|k| (*k, frames_out_vec.with_label_values(&[k])))
            .collect();

        let errors_vec = must(IntCounterVec::new(
            Opts::new("rookery_errors_total", "Error frames sent, by code."),
            &["code"],
        ));
        reg(Box::new(errors_vec.clone()));
        let errors = ErrorCode::ALL
            .iter()
            .map(|c| (*c, errors_vec.with_label_values(&[c.as_str()])))
            .collect();

        let counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            reg(Box::new(c.clone()));
            c
        };
        let messages_accepted = counter(
            "rookery_messages_accepted_total",
            "Messages stored and acknowledged with `sent`.",
        );
        let pushes = counter(
            "rookery_pushes_total",
            "Messages pushed to devices (`msg` frames, first attempts).",
        );
        let repushes = counter(
            "rookery_repushes_total",
            "Messages pushed again after ack_timeout_ms.",
        );
        let slow_consumer_disconnects = counter(
            "rookery_slow_consumer_disconnects_total",
            "Connections closed because the client did not read its frames.",
        );

        let media_bytes_received = counter(
            "rookery_media_bytes_received_total",
            "Bytes of upload chunks stored.",
        );
        let media_stored = counter(
            "rookery_media_stored_total",
            "Uploads completed (content verified and stored).",
        );

        let admin_auth_failures = counter(
            "rookery_admin_auth_failures_total",
            "Requests to admin endpoints (server API, POST /v1/token) refused for a missing or wrong admin key.",
        );

        let webhook_outbox_events = must(IntGauge::new(
            "rookery_webhook_outbox_events",
            "Webhook events stored on this node and not yet acknowledged by the receiver.",
        ));
        reg(Box::new(webhook_outbox_events.clone()));
        let webhook_outbox_age_seconds = must(Gauge::new(
            "rookery_webhook_outbox_age_seconds",
            "Age of the oldest webhook event waiting in this node's outbox (0 when empty).",
        ));
        reg(Box::new(webhook_outbox_age_seconds.clone()));
        let webhook_requests = must(IntCounterVec::new(
            Opts::new(
                "rookery_webhook_requests_total",
                "Webhook batches posted, by result (ok: a 2xx; failed: anything else, retried).",
            ),
            &["result"],
        ));
        reg(Box::new(webhook_requests.clone()));
        let webhook_requests_ok = webhook_requests.with_label_values(&["ok"]);
        let webhook_requests_failed = webhook_requests.with_label_values(&["failed"]);
        let webhook_events_delivered = counter(
            "rookery_webhook_events_delivered_total",
            "Webhook events acknowledged by the receiver (and removed from the outbox).",
        );
        let before_send_vec = must(IntCounterVec::new(
            Opts::new(
                "rookery_before_send_total",
                "Before-send hook calls, by answer (allow, reject, replace, failed: none or invalid).",
            ),
            &["answer"],
        ));
        reg(Box::new(before_send_vec.clone()));
        let before_send_answers = ["allow", "reject", "replace", "failed"]
            .iter()
            .map(|a| (*a, before_send_vec.with_label_values(&[a])))
            .collect();

        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = must(Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(buckets),
            ));
            reg(Box::new(h.clone()));
            h
        };
        let latency_buckets = vec![
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
            1.0, 2.5,
        ];
        let send_seconds = histogram(
            "rookery_send_seconds",
            "Time from a `send` frame's arrival to its `sent` reply.",
            latency_buckets.clone(),
        );
        let store_flush_seconds = histogram(
            "rookery_store_flush_seconds",
            "Duration of one group-commit flush (fsync).",
            latency_buckets.clone(),
        );
        let webhook_request_seconds = histogram(
            "rookery_webhook_request_seconds",
            "Time from posting a webhook batch to the receiver's answer (or the failure).",
            latency_buckets.clone(),
        );
        let before_send_seconds = histogram(
            "rookery_before_send_seconds",
            "Time from asking the before-send hook to its answer (or the failure).",
            latency_buckets.clone(),
        );

        let peer_link_state = must(IntGaugeVec::new(
            Opts::new(
                "rookery_peer_link_state",
                "This node's link to each peer: 0 down, 1 up, 2 refused (different cluster config).",
            ),
            &["peer"],
        ));
        reg(Box::new(peer_link_state.clone()));
        let peer_envelopes = must(IntCounterVec::new(
            Opts::new(
                "rookery_peer_envelopes_total",
                "Envelopes exchanged with each peer, by kind (call, reply, push, online, ...).",
            ),
            &["peer", "direction", "kind"],
        ));
        reg(Box::new(peer_envelopes.clone()));
        let peer_bytes = must(IntCounterVec::new(
            Opts::new(
                "rookery_peer_bytes_total",
                "Bytes exchanged with each peer.",
            ),
            &["peer", "direction"],
        ));
        reg(Box::new(peer_bytes.clone()));
        let remote_call_seconds = must(HistogramVec::new(
            HistogramOpts::new(
                "rookery_remote_call_seconds",
                "Time from a call to an actor on another node to its reply.",
            )
            .buckets(latency_buckets),
            &["peer"],
        ));
        reg(Box::new(remote_call_seconds.clone()));
        let raft_poll_seconds = histogram(
            "rookery_raft_poll_seconds",
            "One round of the Raft driver: every group's new entries appended and synced (one fdatasync), \
             then messages and commits handed out.",
            vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ],
        );
        let raft_proposal_seconds = histogram(
            "rookery_raft_proposal_seconds",
            "From a proposal to its entry applied on the proposing leader: appended, replicated and synced \
             on a majority, committed and applied.",
            vec![
                0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ],
        );
        let membership_epoch = must(IntGauge::new(
            "rookery_membership_epoch",
            "The epoch of the cluster membership record this node applied (grows with every change).",
        ));
        reg(Box::new(membership_epoch.clone()));
        let partitions_moving = must(IntGauge::new(
            "rookery_partitions_moving",
            "Partitions whose replicas are not yet where the membership wants them.",
        ));
        reg(Box::new(partitions_moving.clone()));
        let move_bytes = must(IntCounter::new(
            "rookery_move_bytes_total",
            "Bytes of partition snapshots sent to replicas being added (or far behind).",
        ));
        reg(Box::new(move_bytes.clone()));
        let move_seconds = histogram(
            "rookery_move_seconds",
            "How long moving a partition's replicas took, from its first change of replicas to settled.",
            vec![0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0],
        );
        let unrouted = must(IntCounter::new(
            "rookery_unrouted_total",
            "Requests answered `unavailable` because no leader of their key's partition was ready within \
             election_timeout_ms + 1 s.",
        ));
        reg(Box::new(unrouted.clone()));
        let partition_gauge = |name: &str, help: &str| {
            let vec = must(IntGaugeVec::new(Opts::new(name, help), &["partition"]));
            reg(Box::new(vec.clone()));
            vec
        };
        let raft_partition = RaftPartitionMetrics {
            leader: partition_gauge(
                "rookery_raft_partition_leader",
                "1 if this node leads the partition, 0 if it follows.",
            ),
            term: partition_gauge(
                "rookery_raft_partition_term",
                "The partition's Raft term as this node knows it.",
            ),
            commit: partition_gauge(
                "rookery_raft_partition_commit_index",
                "The partition's highest log index this node knows committed.",
            ),
            applied: partition_gauge(
                "rookery_raft_partition_applied_index",
                "The partition's highest log index applied to this node's store (commit minus applied is the lag).",
            ),
        };
        let raft_snapshots_sent = must(IntCounter::new(
            "rookery_raft_snapshots_sent_total",
            "Snapshots of a partition's data sent to a replica that needed compacted entries.",
        ));
        reg(Box::new(raft_snapshots_sent.clone()));
        let raft_snapshots_installed = must(IntCounter::new(
            "rookery_raft_snapshots_installed_total",
            "Snapshots of a partition's data installed here from its leader.",
        ));
        reg(Box::new(raft_snapshots_installed.clone()));
        let raft_partitions = must(IntGauge::new(
            "rookery_raft_partitions",
            "Partitions (Raft groups) this node keeps a replica of.",
        ));
        reg(Box::new(raft_partitions.clone()));
        let raft_partitions_led = must(IntGauge::new(
            "rookery_raft_partitions_led",
            "Partitions (Raft groups) this node currently leads.",
        ));
        reg(Box::new(raft_partitions_led.clone()));
        let raft_leader_changes = must(IntCounter::new(
            "rookery_raft_leader_changes_total",
            "Times a partition's leader or term changed, as this node saw it.",
        ));
        reg(Box::new(raft_leader_changes.clone()));

        Metrics {
            registry,
            ws_connections,
            actors,
            frames_in,
            frames_in_other,
            frames_out,
            errors,
            messages_accepted,
            pushes,
            repushes,
            slow_consumer_disconnects,
            media_bytes_received,
            media_stored,
            admin_auth_failures,
            webhook_outbox_events,
            webhook_outbox_age_seconds,
            webhook_requests_ok,
            webhook_requests_failed,
            webhook_events_delivered,
            webhook_request_seconds,
            before_send_answers,
            before_send_seconds,
            send_seconds,
            store_flush_seconds,
            peer_link_state,
            peer_envelopes,
            peer_bytes,
            remote_call_seconds,
            raft_partitions,
            raft_partitions_led,
            raft_leader_changes,
            raft_poll_seconds,
            raft_proposal_seconds,
            unrouted,
            raft_partition,
            raft_snapshots_sent,
            raft_snapshots_installed,
            membership_epoch,
            partitions_moving,
            move_bytes,
            move_seconds,
        }
    }

    /// The metrics of the link to `peer`.
    pub fn peer(&self, peer: &str) -> PeerMetrics {
        PeerMetrics {
            state: self.peer_link_state.with_label_values(&[peer]),
            envelopes_sent: PeerFrame::KINDS
                .iter()
                .map(|k| self.peer_envelopes.with_label_values(&[peer, "sent", k]))
                .collect(),
            envelopes_received: PeerFrame::KINDS
                .iter()
                .map(|k| {
                    self.peer_envelopes
                        .with_label_values(&[peer, "received", k])
                })
                .collect(),
            bytes_sent: self.peer_bytes.with_label_values(&[peer, "sent"]),
            bytes_received: self.peer_bytes.with_label_values(&[peer, "received"]),
            call_seconds: self.remote_call_seconds.with_label_values(&[peer]),
        }
    }

    pub fn actor(&self, kind: ActorKind) -> &IntGauge {
        &self.actors[kind as usize]
    }

    pub fn frame_in(&self, kind: &str) {
        self.frames_in
            .get(kind)
            .unwrap_or(&self.frames_in_other)
            .inc();
    }

    pub fn frame_out(&self, kind: &str) {
        if let Some(c) = self.frames_out.get(kind) {
            c.inc();
        }
    }

    /// Counts a before-send hook call by its answer (`allow`, `reject`, `replace`, `failed`).
    pub fn before_send(&self, answer: &str) {
        if let Some(c) = self.before_send_answers.get(answer) {
            c.inc();
        }
    }

    pub fn error(&self, code: ErrorCode) {
        if let Some(c) = self.errors.get(&code) {
            c.inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_render() {
        let m = Metrics::new();
        m.frame_in("send");
        m.frame_in("bogus");
        m.frame_out("msg");
        m.error(ErrorCode::Forbidden);
        m.actor(ActorKind::User).inc();
        m.send_seconds.observe(0.001);
        let p = m.peer("n2");
        p.state.set(1);
        p.envelopes_sent[7].inc();
        p.call_seconds.observe(0.001);
        let text = m.render();
        for name in [
            "rookery_ws_connections",
            "rookery_actors{kind=\"user\"} 1",
            "rookery_frames_in_total{type=\"send\"} 1",
            "rookery_frames_in_total{type=\"invalid\"} 1",
            "rookery_frames_out_total{type=\"msg\"} 1",
            "rookery_errors_total{code=\"forbidden\"} 1",
            "rookery_messages_accepted_total",
            "rookery_pushes_total",
            "rookery_admin_auth_failures_total",
            "rookery_webhook_outbox_events",
            "rookery_webhook_outbox_age_seconds",
            "rookery_webhook_requests_total{result=\"failed\"}",
            "rookery_webhook_events_delivered_total",
            "rookery_webhook_request_seconds_bucket",
            "rookery_before_send_total{answer=\"allow\"}",
            "rookery_before_send_seconds_bucket",
            "rookery_send_seconds_bucket",
            "rookery_store_flush_seconds_bucket",
            "rookery_peer_link_state{peer=\"n2\"} 1",
            "rookery_peer_envelopes_total{direction=\"sent\",kind=\"push\",peer=\"n2\"} 1",
            "rookery_remote_call_seconds_bucket",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
    }
}
