//! The cluster's membership, kept by the cluster itself: which nodes are members (their addresses and
//! state), an epoch that grows with every change, and where each partition's replicas are. The `[[nodes]]`
//! of `cluster.toml` are only the first members ([`Membership::initial`]); after that the record changes
//! through [`MemberCommand`]s committed to the metadata Raft group (see `cluster::replication`) and
//! applied by this pure, deterministic core on every node, so every node holds the same record.
//!
//! Two layouts come out of it:
//! - the **target** ([`Membership::target`]): every partition's replicas as the consistent-hash ring over
//!   the members that hold data (`active` and `joining`) places them, the preferred leader first;
//! - the **placement** ([`Membership::placement`]): every partition's replicas as its leader last
//!   reported them ([`MemberCommand::Placed`]) once a change of replicas was done.
//!
//! A partition whose placement differs from its target is *moving*. Partitions move one Raft change at a
//! time under their leader ([`plan`]: learners added and caught up by snapshot, then one joint change that
//! promotes them and removes the replicas that go, leadership handed over first if the leader itself
//! goes). When nothing moves, `joining` members become `active` and `leaving` members, which then hold
//! nothing, are forgotten.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::placement::{partition_point, PartitionId};
use super::ring::Ring;
use crate::config::{Config, MAX_NODES};
use crate::ids::NodeId;
use crate::raft::multi::Replicas;

/// A member's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Holds its share of the partitions.
    Active,
    /// Added; receives its share of the partitions, then becomes active.
    Joining,
    /// Being removed: its replicas move to the others, then it is forgotten.
    Leaving,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Joining => "joining",
            MemberState::Leaving => "leaving",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub listen: String,
    pub peer: String,
    pub state: MemberState,
}

/// A change of the membership, as committed to the metadata group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MemberCommand {
    /// A new member (`POST /v1/admin/nodes`); repeating it for a member with the same addresses changes
    /// nothing.
    Add {
        id: NodeId,
        listen: String,
        peer: String,
    },
    /// A member to remove (`DELETE /v1/admin/nodes/ID`); its replicas move to the others first.
    Remove { id: NodeId },
    /// Partition `partition`'s voters after a change of its replicas, reported by its leader.
    Placed {
        partition: PartitionId,
        replicas: Vec<NodeId>,
    },
}

/// Why a command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("node {0} is a member with other addresses")]
    Conflict(NodeId),
    #[error("address {0} is already used by node {1}")]
    AddressTaken(String, NodeId),
    #[error("node {0} is leaving; add it again once it is gone")]
    Leaving(NodeId),
    #[error("node {0} is not a member")]
    Unknown(NodeId),
    #[error("node {0} is the last member holding data")]
    Last(NodeId),
    #[error("a cluster has at most {MAX_NODES} nodes")]
    Full,
    #[error("partition {0} does not exist")]
    NoPartition(PartitionId),
}

/// The shape of the cluster that every member must share (from the config): it decides the layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub partitions: u32,
    pub replicas: usize,
    pub vnodes: usize,
}

impl Shape {
    pub fn of(config: &Config) -> Shape {
        Shape {
            partitions: config.cluster.partitions,
            replicas: config.cluster.replicas,
            vnodes: config.cluster.vnodes,
        }
    }

    /// A stable hash of the shape, exchanged when peers connect: nodes whose shapes differ would place
    /// keys differently, and refuse each other.
    pub fn signature(&self) -> u64 {
        let mut h = fnv::FnvHasher::default();
        std::hash::Hasher::write(&mut h, b"rookery shape v1");
        std::hash::Hasher::write_u32(&mut h, self.partitions);
        std::hash::Hasher::write_u64(&mut h, self.replicas as u64);
        std::hash::Hasher::write_u64(&mut h, self.vnodes as u64);
        std::hash::Hasher::finish(&h)
    }
}

/// The membership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Grows by one with every change of `members`.
    pub epoch: u64,
    /// Sorted by id.
    pub members: Vec<Member>,
    /// Every partition's voters as last reported (index = partition).
    pub placement: Vec<Vec<NodeId>>,
}

impl Membership {
    /// The first members: the config's `[[nodes]]`, all active, placed where the ring puts them.
    pub fn initial(config: &Config) -> Membership {
        let mut members: Vec<Member> = config
            .nodes
            .iter()
            .filter_map(|n| {
                Some(Member {
                    id: NodeId::parse(&n.id).ok()?,
                    listen: n.listen.clone(),
                    peer: n.peer.clone(),
                    state: MemberState::Active,
                })
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        let mut record = Membership {
            epoch: 1,
            members,
            placement: Vec::new(),
        };
        record.placement = record.target(Shape::of(config));
        record
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == *id)
    }

    /// The members that hold (or are receiving) data: active and joining.
    pub fn holders(&self) -> impl Iterator<Item = &NodeId> {
        self.members
            .iter()
            .filter(|m| m.state != MemberState::Leaving)
            .map(|m| &m.id)
    }

    /// Every partition's target replicas (the ring over the holders), the preferred leader first.
    pub fn target(&self, shape: Shape) -> Vec<Vec<NodeId>> {
        let ids: Vec<NodeId> = self.holders().cloned().collect();
        if ids.is_empty() {
            return vec![Vec::new(); shape.partitions as usize];
        }
        let ring = Ring::from_ids(ids.clone(), shape.vnodes);
        let count = shape.replicas.min(ids.len()).max(1);
        (0..shape.partitions)
            .map(|p| ring.candidates(&partition_point(p)).take(count).collect())
            .collect()
    }

    /// The partitions whose placement differs from their target (as sets).
    pub fn moving(&self, target: &[Vec<NodeId>]) -> usize {
        target
            .iter()
            .enumerate()
            .filter(|(p, want)| {
                let have: BTreeSet<&NodeId> =
                    self.placement.get(*p).into_iter().flatten().collect();
                let want: BTreeSet<&NodeId> = want.iter().collect();
                have != want
            })
            .count()
    }

    /// The members that some partition's target names and its placement does not yet: nodes still
    /// taking in partitions (a joining node, or one that takes over a leaving node's share).
    pub fn receiving(&self, target: &[Vec<NodeId>]) -> BTreeSet<NodeId> {
        target
            .iter()
            .enumerate()
            .flat_map(|(p, want)| {
                let have = self.placement.get(p);
                want.iter()
                    .filter(move |n| !have.is_some_and(|h| h.contains(n)))
            })
            .cloned()
            .collect()
    }

    /// Applies a committed command; `Ok(true)` if the record changed. Every node applies the same
    /// commands in the same order, so a refusal is the same everywhere.
    pub fn apply(&mut self, command: &MemberCommand, shape: Shape) -> Result<bool, MemberError> {
        let changed = match command {
            MemberCommand::Add { id, listen, peer } => self.add(id, listen, peer)?,
            MemberCommand::Remove { id } => self.remove(id)?,
            MemberCommand::Placed {
                partition,
                replicas,
            } => {
                let slot = self
                    .placement
                    .get_mut(*partition as usize)
                    .ok_or(MemberError::NoPartition(*partition))?;
                let changed = *slot != *replicas;
                *slot = replicas.clone();
                changed
            }
        };
        let settled = self.settle(shape);
        Ok(changed || settled)
    }

    fn add(&mut self, id: &NodeId, listen: &str, peer: &str) -> Result<bool, MemberError> {
        if let Some(m) = self.member(id) {
            return match m.state {
                MemberState::Leaving => Err(MemberError::Leaving(id.clone())),
                _ if m.listen == listen && m.peer == peer => Ok(false),
                _ => Err(MemberError::Conflict(id.clone())),
            };
        }
        if let Some(m) = self
            .members
            .iter()
            .find(|m| m.listen == listen || m.peer == peer || m.listen == peer || m.peer == listen)
        {
            let taken = if m.listen == listen || m.peer == listen {
                listen
            } else {
                peer
            };
            return Err(MemberError::AddressTaken(taken.to_owned(), m.id.clone()));
        }
        if self.members.len() >= MAX_NODES {
            return Err(MemberError::Full);
        }
        self.members.push(Member {
            id: id.clone(),
            listen: listen.to_owned(),
            peer: peer.to_owned(),
            state: MemberState::Joining,
        });
        self.members.sort_by(|a, b| a.id.cmp(&b.id));
        self.epoch += 1;
        Ok(true)
    }

    fn remove(&mut self, id: &NodeId) -> Result<bool, MemberError> {
        let holders = self.holders().count();
        let member = self
            .members
            .iter_mut()
            .find(|m| m.id == *id)
            .ok_or_else(|| MemberError::Unknown(id.clone()))?;
        if member.state == MemberState::Leaving {
            return Ok(false);
        }
        if holders <= 1 {
            return Err(MemberError::Last(id.clone()));
        }
        member.state = MemberState::Leaving;
        self.epoch += 1;
        Ok(true)
    }

    /// Once nothing moves: joining members are active, and leaving members (which then hold no replica)
    /// are forgotten. Returns whether anything changed.
    fn settle(&mut self, shape: Shape) -> bool {
        let target = self.target(shape);
        if self.moving(&target) > 0 {
            return false;
        }
        let before = self.members.len();
        let mut changed = false;
        for m in &mut self.members {
            if m.state == MemberState::Joining {
                m.state = MemberState::Active;
                changed = true;
            }
        }
        self.members.retain(|m| m.state != MemberState::Leaving);
        changed |= self.members.len() != before;
        if changed {
            self.epoch += 1;
        }
        changed
    }
}

/// What a partition's leader does next to bring the group's replicas to their target (see [`plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The voters are the target: nothing to do.
    Settled,
    /// A joint configuration is still in force: leave it.
    LeaveJoint,
    /// New replicas need the log to start after a snapshot point (a new replica learns the group's
    /// configuration from a snapshot): compact it first.
    Compact,
    AddLearners(Vec<u64>),
    /// One joint change: promote caught-up learners, remove voters (and stray learners) not in the target.
    Replace {
        promote: Vec<u64>,
        remove: Vec<u64>,
    },
    /// This node leaves the group: hand its leadership to this caught-up voter of the target first.
    Transfer(u64),
    /// Learners are catching up.
    Wait,
}

/// The order in which a leader that leaves its group tries the target's voters (see [`plan`]'s
/// [`Step::Transfer`]): the target's order, with the nodes still taking partitions in last (see
/// [`Membership::receiving`]): a node installing snapshots would answer the partition's requests only
/// between its installations.
pub fn handover_order(target: &[u64], receiving: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut order = target.to_vec();
    // stable: the target's order otherwise
    order.sort_by_key(|id| receiving(*id));
    order
}

/// What the leader `me` of a group with `replicas` does next towards `target` (Raft ids, the preferred
/// leader first). `caught_up` says whether a replica has the whole log; `compacted` whether the log
/// starts after a snapshot point.
pub fn plan(
    me: u64,
    replicas: &Replicas,
    target: &[u64],
    caught_up: impl Fn(u64) -> bool,
    compacted: bool,
) -> Step {
    if target.is_empty() {
        return Step::Settled;
    }
    if replicas.joint() {
        return Step::LeaveJoint;
    }
    let missing: Vec<u64> = target
        .iter()
        .copied()
        .filter(|id| !replicas.has(*id))
        .collect();
    if !missing.is_empty() {
        return if compacted {
            Step::AddLearners(missing)
        } else {
            Step::Compact
        };
    }
    let stray: Vec<u64> = replicas
        .learners
        .iter()
        .copied()
        .filter(|id| !target.contains(id))
        .collect();
    let promote: Vec<u64> = replicas
        .learners
        .iter()
        .copied()
        .filter(|id| target.contains(id))
        .collect();
    if promote.iter().any(|id| !caught_up(*id)) {
        return Step::Wait;
    }
    let mut remove: Vec<u64> = replicas
        .voters
        .iter()
        .copied()
        .filter(|id| !target.contains(id))
        .collect();
    remove.extend(stray);
    if remove.contains(&me) {
        remove.retain(|id| *id != me);
        if promote.is_empty() && remove.is_empty() {
            // the target's voters are all in: hand over to the first of them that is caught up
            return target
                .iter()
                .copied()
                .find(|id| replicas.voters.contains(id) && caught_up(*id))
                .map_or(Step::Wait, Step::Transfer);
        }
    }
    if promote.is_empty() && remove.is_empty() {
        Step::Settled
    } else {
        Step::Replace { promote, remove }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).expect("id")
    }

    fn config(nodes: usize) -> Config {
        let mut text = String::from("[cluster]\nreplicas = 3\npartitions = 32\n");
        for n in 1..=nodes {
            text.push_str(&format!(
                "[[nodes]]\nid='n{n}'\nlisten='127.0.0.1:{}'\npeer='127.0.0.1:{}'\ndata_dir='d{n}'\n",
                7000 + n,
                7100 + n
            ));
        }
        Config::parse(&text).expect("config")
    }

    fn add(n: u16) -> MemberCommand {
        MemberCommand::Add {
            id: id(&format!("n{n}")),
            listen: format!("127.0.0.1:{}", 7000 + n),
            peer: format!("127.0.0.1:{}", 7100 + n),
        }
    }

    /// Reports every partition where the target says (what the leaders do once their moves are done).
    fn place_all(record: &mut Membership, shape: Shape) {
        for (p, replicas) in record.target(shape).into_iter().enumerate() {
            let partition = PartitionId::try_from(p).expect("partition");
            record
                .apply(
                    &MemberCommand::Placed {
                        partition,
                        replicas,
                    },
                    shape,
                )
                .expect("placed");
        }
    }

    #[test]
    fn the_first_members_are_the_config_nodes_placed_by_the_ring() {
        let config = config(3);
        let shape = Shape::of(&config);
        let record = Membership::initial(&config);
        assert_eq!(record.epoch, 1);
        assert_eq!(record.members.len(), 3);
        assert!(record
            .members
            .iter()
            .all(|m| m.state == MemberState::Active));
        assert_eq!(record.moving(&record.target(shape)), 0);
        assert_eq!(record.placement.len(), 32);
        assert!(record.placement.iter().all(|r| r.len() == 3));
    }

    #[test]
    fn a_node_joins_receives_its_share_and_becomes_active() {
        let config = config(3);
        let shape = Shape::of(&config);
        let mut record = Membership::initial(&config);
        assert!(record.apply(&add(4), shape).expect("add"));
        assert_eq!(record.epoch, 2);
        let n4 = id("n4");
        assert_eq!(
            record.member(&n4).map(|m| m.state),
            Some(MemberState::Joining)
        );
        let target = record.target(shape);
        let moving = record.moving(&target);
        let share = target.iter().filter(|r| r.contains(&n4)).count();
        assert_eq!(moving, share, "exactly the partitions n4 gets move");
        assert!(
            share > 32 * 3 / 4 / 2,
            "about a quarter of the replicas: {share}"
        );
        assert!(!record.apply(&add(4), shape).expect("again"), "idempotent");
        assert_eq!(
            record.receiving(&target),
            BTreeSet::from([n4.clone()]),
            "only the joiner takes partitions in"
        );
        place_all(&mut record, shape);
        assert!(record.receiving(&record.target(shape)).is_empty());
        assert_eq!(
            record.member(&n4).map(|m| m.state),
            Some(MemberState::Active)
        );
        assert_eq!(record.epoch, 3);
    }

    #[test]
    fn a_removed_node_leaves_once_its_replicas_moved_and_is_forgotten() {
        let config = config(4);
        let shape = Shape::of(&config);
        let mut record = Membership::initial(&config);
        let n2 = id("n2");
        assert!(record
            .apply(&MemberCommand::Remove { id: n2.clone() }, shape)
            .expect("remove"));
        assert_eq!(
            record.member(&n2).map(|m| m.state),
            Some(MemberState::Leaving)
        );
        let target = record.target(shape);
        assert!(target.iter().all(|r| !r.contains(&n2) && r.len() == 3));
        assert!(record.moving(&target) > 0);
        let receiving = record.receiving(&target);
        assert!(
            !receiving.is_empty() && !receiving.contains(&n2),
            "the others take n2's share: {receiving:?}"
        );
        place_all(&mut record, shape);
        assert!(record.member(&n2).is_none(), "forgotten");
        assert_eq!(record.members.len(), 3);
    }

    #[test]
    fn refusals() {
        let config = config(2);
        let shape = Shape::of(&config);
        let mut record = Membership::initial(&config);
        let clash = MemberCommand::Add {
            id: id("n1"),
            listen: "127.0.0.1:9".into(),
            peer: "127.0.0.1:10".into(),
        };
        assert_eq!(
            record.apply(&clash, shape),
            Err(MemberError::Conflict(id("n1")))
        );
        let taken = MemberCommand::Add {
            id: id("n9"),
            listen: "127.0.0.1:7001".into(),
            peer: "127.0.0.1:10".into(),
        };
        assert!(matches!(
            record.apply(&taken, shape),
            Err(MemberError::AddressTaken(..))
        ));
        let unknown = MemberCommand::Remove { id: id("n9") };
        assert_eq!(
            record.apply(&unknown, shape),
            Err(MemberError::Unknown(id("n9")))
        );
        record
            .apply(&MemberCommand::Remove { id: id("n1") }, shape)
            .expect("remove one of two");
        assert_eq!(
            record.apply(&MemberCommand::Remove { id: id("n2") }, shape),
            Err(MemberError::Last(id("n2")))
        );
        assert_eq!(
            record.apply(&add(1), shape),
            Err(MemberError::Leaving(id("n1")))
        );
        let bad = MemberCommand::Placed {
            partition: 99,
            replicas: vec![],
        };
        assert_eq!(record.apply(&bad, shape), Err(MemberError::NoPartition(99)));
    }

    fn replicas(voters: &[u64], learners: &[u64]) -> Replicas {
        Replicas {
            voters: voters.to_vec(),
            outgoing: Vec::new(),
            learners: learners.to_vec(),
            index: 1,
        }
    }

    #[test]
    fn a_move_adds_learners_promotes_them_when_caught_up_and_removes_the_old() {
        let all = |_| true;
        let none = |_| false;
        let now = replicas(&[1, 2, 3], &[]);
        assert_eq!(plan(1, &now, &[1, 2, 3], all, true), Step::Settled);
        assert_eq!(plan(1, &now, &[4, 1, 2], all, false), Step::Compact);
        assert_eq!(
            plan(1, &now, &[4, 1, 2], all, true),
            Step::AddLearners(vec![4])
        );
        let learning = replicas(&[1, 2, 3], &[4]);
        assert_eq!(plan(1, &learning, &[4, 1, 2], none, true), Step::Wait);
        assert_eq!(
            plan(1, &learning, &[4, 1, 2], all, true),
            Step::Replace {
                promote: vec![4],
                remove: vec![3]
            }
        );
        let joint = Replicas {
            outgoing: vec![1, 2, 3],
            ..replicas(&[1, 2, 4], &[])
        };
        assert_eq!(plan(1, &joint, &[4, 1, 2], all, true), Step::LeaveJoint);
        assert_eq!(
            plan(1, &replicas(&[1, 2, 4], &[]), &[4, 1, 2], all, true),
            Step::Settled
        );
    }

    #[test]
    fn a_leader_that_goes_promotes_first_then_hands_over() {
        let all = |_| true;
        let learning = replicas(&[1, 2, 3], &[4]);
        assert_eq!(
            plan(3, &learning, &[4, 1, 2], all, true),
            Step::Replace {
                promote: vec![4],
                remove: vec![]
            },
            "the leader does not remove itself"
        );
        let promoted = replicas(&[1, 2, 3, 4], &[]);
        assert_eq!(plan(3, &promoted, &[4, 1, 2], all, true), Step::Transfer(4));
        assert_eq!(
            plan(3, &promoted, &[4, 1, 2], |id| id == 2, true),
            Step::Transfer(2)
        );
        assert_eq!(plan(3, &promoted, &[4, 1, 2], |_| false, true), Step::Wait);
        // the preferred leader 4 still takes partitions in: 1 gets it, in the target's order otherwise
        let order = handover_order(&[4, 1, 2], |id| id == 4);
        assert_eq!(order, vec![1, 2, 4]);
        assert_eq!(plan(3, &promoted, &order, all, true), Step::Transfer(1));
        assert_eq!(
            plan(3, &promoted, &order, |id| id != 1, true),
            Step::Transfer(2)
        );
        assert_eq!(
            plan(3, &promoted, &order, |id| id == 4, true),
            Step::Transfer(4),
            "a receiving node rather than none"
        );
        assert_eq!(handover_order(&[4, 1, 2], |_| false), vec![4, 1, 2]);
        // under the new leader
        assert_eq!(
            plan(4, &promoted, &[4, 1, 2], all, true),
            Step::Replace {
                promote: vec![],
                remove: vec![3]
            }
        );
    }

    #[test]
    fn stray_learners_are_removed_and_a_dead_voter_replaced() {
        let all = |_| true;
        let stray = replicas(&[1, 2, 3], &[5]);
        assert_eq!(
            plan(1, &stray, &[1, 2, 3], all, true),
            Step::Replace {
                promote: vec![],
                remove: vec![5]
            }
        );
        // 3 is dead and removed: 4 replaces it once it caught up from the live copies
        let learning = replicas(&[1, 2, 3], &[4]);
        let live = |id| id != 3;
        assert_eq!(
            plan(1, &learning, &[1, 2, 4], live, true),
            Step::Replace {
                promote: vec![4],
                remove: vec![3]
            }
        );
    }
}
