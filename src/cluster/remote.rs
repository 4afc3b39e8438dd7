//! What travels between nodes: the peer-link frames and the actor messages that may cross a node boundary.
//!
//! An actor message crosses as a `Call` (or a `Tell`, without reply) naming the target actor (a user or a
//! conversation), the message type ([`Remote::NAME`]) and the message as JSON. The receiving node hands it to
//! its own router, exactly as a local caller would, and answers with the handler's result as JSON. The table
//! at the bottom of this file is the closed list of messages that may cross; everything else stays local.

use std::future::Future;
use std::pin::Pin;

use actix::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::pulls::FetchMany;
use crate::actors::conversation::{
    Ack, Fetch, Friendship, GetReceipts, MarkRead, Post, Recall, Summarize, Typing,
};
use crate::actors::features::{CheckMember, EditMessage, GetReactors, React, SetBlock};
use crate::actors::group::{
    ChangeMembers, CreateGroup, DescribeGroup, LeaveGroup, ServerChangeMembers, ServerCreateGroup,
    ServerDescribeGroup,
};
use crate::actors::server_api::{LookupCid, ServerFetch, ServerPost};
use crate::actors::session::Outbound;
use crate::actors::user::{
    AddConv, Connect, DescribeUser, Disconnect, GetConvSettings, ListConvEntries, ListConvs,
    ListFriends, Logout, PresenceChanged, RemoveConv, SetBan, SetBlocked, SetConvSettings,
    SetFriend,
};
use crate::error::{ChatError, ChatResult};
use crate::ids::{ConvId, DeviceId, NodeId, UserId};

use super::Router;

/// The actor a call is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Target {
    User(UserId),
    Conv(ConvId),
}

/// One frame on a peer link: 4 bytes of big-endian length, then this as JSON; or, for the Raft
/// traffic to a node that reads them (its `Welcome` said `binary`), a binary frame (see
/// `peer::encode`): `RaftBytes` and `RaftPartBytes` carry their bytes as they are, where `Raft` and
/// `RaftPart` carry them in base64 inside JSON (a third more bytes, and both encodings to run on each
/// side: most of what a move of partitions streams).
///
/// The dialing node sends `Hello` (after the listener's `Challenge`), `Call`, `Tell`, `Push`, `Kick`,
/// `Online` and `Ping`; the listening node sends `Challenge`, `Welcome` or `Refused`, `Reply` and `Pong`.
/// Everything a node sends to a peer goes over its own link to that peer, so it arrives in the order sent.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerFrame {
    Challenge {
        nonce: String,
    },
    /// `proof` is HMAC-SHA256 over the "hello" label, the acceptor's nonce, the node id and the signature,
    /// keyed by the cluster's secret; `nonce` is the dialer's own challenge for the acceptor.
    Hello {
        node: NodeId,
        signature: String,
        proof: String,
        #[serde(default)]
        nonce: String,
        /// The dialer's addresses: a node that joins (and has no membership record yet) learns its peers
        /// from the members that dial it.
        #[serde(default)]
        listen: String,
        #[serde(default)]
        peer: String,
    },
    /// The acceptor's answer: `proof` is the same HMAC over the "welcome" label, the dialer's nonce, the
    /// acceptor's id and the signature, so the dialer knows it reached a node that holds the secret.
    Welcome {
        node: NodeId,
        signature: String,
        #[serde(default)]
        proof: String,
        /// The acceptor's process: a random number drawn when it started (0 from an older node). A new
        /// one means it restarted, and lost what it had not acknowledged (see `Peer::incarnation`).
        #[serde(default)]
        incarnation: u64,
        /// The acceptor reads binary Raft frames (`RaftBytes`, `RaftPartBytes`); an older node does not
        /// say so, and gets `Raft` and `RaftPart`.
        #[serde(default)]
        binary: bool,
    },
    Refused {
        reason: String,
    },
    Call {
        id: u64,
        to: Target,
        name: String,
        body: Box<RawValue>,
    },
    /// A message without an answer, for a user's live actor. A node that does not serve the user passes it
    /// on to the node that does, once (`forwarded`: it then goes no further, so two nodes whose views of a
    /// leader disagree for a moment cannot pass it back and forth).
    Tell {
        to: Target,
        name: String,
        body: Box<RawValue>,
        #[serde(default)]
        forwarded: bool,
    },
    Reply {
        id: u64,
        result: Result<Box<RawValue>, ChatError>,
    },
    /// Deliver `out` to every device connected to the receiving node of each of `users` (but `except`): one
    /// envelope per node however many users.
    Push {
        users: Vec<UserId>,
        except: Option<(UserId, DeviceId)>,
        out: Outbound,
        /// Hand it to the sessions through their workers' lanes (a large fan-out; see `actors::lane`).
        #[serde(default)]
        bulk: bool,
    },
    /// End the session `session` of `user` on the receiving node (its device connected again elsewhere).
    Kick {
        user: UserId,
        session: u64,
    },
    /// Users whose first device connected to (`online`) or last device left (`!online`) the sending node.
    /// With `reset`, the list replaces everything the receiver knew about the sender's sessions.
    Online {
        users: Vec<UserId>,
        online: bool,
        reset: bool,
    },
    Ping {
        connections: u64,
    },
    Pong {
        connections: u64,
        /// The partitions the answering node leads (so that every node can name every partition's leader,
        /// including those it keeps no replica of).
        #[serde(default)]
        led: Vec<u32>,
    },
    /// Raft messages of every group the sender shares with the receiver, from one round of the sender's
    /// driver (see `cluster::replication`): base64 of (partition, length, protobuf message) records.
    Raft {
        batch: String,
        /// Groups the sender leads that no longer have the receiver, with the index of the configuration
        /// that removed it (the receiver drops its replica; see `raft::multi::MultiRaft::gone`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gone: Vec<(u32, u64)>,
    },
    /// A membership command (JSON) for the metadata group, sent to the node seen leading it.
    Meta {
        command: String,
    },
    /// A piece of a `Raft` batch too large for one frame (a snapshot of a partition's data), sent on the
    /// link's bulk lane, which yields to every other frame between pieces: heartbeats and appends are not
    /// held up behind megabytes of snapshot. The receiver joins the pieces of `id` in order and steps the
    /// batch once `last` arrives.
    RaftPart {
        id: u64,
        part: String,
        last: bool,
    },
    /// `Raft` in a binary frame: the batch's bytes themselves (a slice of the frame as read).
    #[serde(skip)]
    RaftBytes {
        batch: bytes::Bytes,
        gone: Vec<(u32, u64)>,
    },
    /// `RaftPart` in a binary frame: a piece of a batch's bytes themselves (a slice of the frame as
    /// read, or of the whole batch as sent).
    #[serde(skip)]
    RaftPartBytes {
        id: u64,
        part: bytes::Bytes,
        last: bool,
    },
}

impl PeerFrame {
    /// Every frame kind, for metrics labels.
    pub const KINDS: [&'static str; 15] = [
        "challenge",
        "hello",
        "welcome",
        "refused",
        "call",
        "tell",
        "reply",
        "push",
        "kick",
        "online",
        "ping",
        "pong",
        "raft",
        "meta",
        "raft_part",
    ];

    /// This frame's index in [`PeerFrame::KINDS`].
    pub fn kind(&self) -> usize {
        match self {
            PeerFrame::Challenge { .. } => 0,
            PeerFrame::Hello { .. } => 1,
            PeerFrame::Welcome { .. } => 2,
            PeerFrame::Refused { .. } => 3,
            PeerFrame::Call { .. } => 4,
            PeerFrame::Tell { .. } => 5,
            PeerFrame::Reply { .. } => 6,
            PeerFrame::Push { .. } => 7,
            PeerFrame::Kick { .. } => 8,
            PeerFrame::Online { .. } => 9,
            PeerFrame::Ping { .. } => 10,
            PeerFrame::Pong { .. } => 11,
            PeerFrame::Raft { .. } | PeerFrame::RaftBytes { .. } => 12,
            PeerFrame::Meta { .. } => 13,
            PeerFrame::RaftPart { .. } | PeerFrame::RaftPartBytes { .. } => 14,
        }
    }
}

/// An actor message that may be sent to an actor on another node.
pub trait Remote: Message + Serialize + DeserializeOwned + Send + 'static
where
    Self::Result: Serialize + DeserializeOwned + Send,
{
    /// The message's name on the wire.
    const NAME: &'static str;
}

pub type Answer = Pin<Box<dyn Future<Output = ChatResult<Box<RawValue>>>>>;

fn encode<T: Serialize>(value: &T) -> ChatResult<Box<RawValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| ChatError::internal(e.to_string()))
}

fn decode<T: DeserializeOwned>(name: &str, body: &RawValue) -> ChatResult<T> {
    serde_json::from_str(body.get())
        .map_err(|e| ChatError::internal(format!("peer sent a malformed {name}: {e}")))
}

/// Decodes a remote call's reply.
pub fn decode_reply<T: DeserializeOwned>(name: &str, body: &RawValue) -> ChatResult<T> {
    decode(name, body)
}

pub fn encode_message<T: Serialize>(value: &T) -> ChatResult<Box<RawValue>> {
    encode(value)
}

macro_rules! remote_messages {
    (
        conv: [$($conv:ident),* $(,)?],
        user: [$($user:ident),* $(,)?],
        tell_user: [$($tell:ident),* $(,)?] $(,)?
    ) => {
        $(impl Remote for $conv { const NAME: &'static str = stringify!($conv); })*
        $(impl Remote for $user { const NAME: &'static str = stringify!($user); })*
        $(impl Remote for $tell { const NAME: &'static str = stringify!($tell); })*

        /// Runs a call that arrived from a peer on this node's actors. The message is enqueued before this
        /// returns (calls keep their arrival order); the answer is the handler's result as JSON.
        pub fn dispatch(router: &Router, to: Target, name: &str, body: &RawValue) -> Answer {
            // a node's batch of pulls (see `super::pulls`)
            if let (Target::Conv(_), "FetchMany") = (&to, name) {
                let msg: FetchMany = match decode(name, body) {
                    Ok(m) => m,
                    Err(e) => return Box::pin(async move { Err(e) }),
                };
                let reply = super::pulls::serve(router.clone(), msg);
                return Box::pin(async move { encode(&reply.await) });
            }
            // pulls may be answered without the actor (see `Router::fetch`)
            if let (Target::Conv(conv), "Fetch") = (&to, name) {
                let msg: Fetch = match decode(name, body) {
                    Ok(m) => m,
                    Err(e) => return Box::pin(async move { Err(e) }),
                };
                let reply = router.fetch(conv, msg);
                return Box::pin(async move { encode(&reply.await?) });
            }
            match to {
                Target::Conv(conv) => {
                    $(if name == stringify!($conv) {
                        let msg: $conv = match decode(name, body) {
                            Ok(m) => m,
                            Err(e) => return Box::pin(async move { Err(e) }),
                        };
                        let reply = router.ask_conv(&conv, msg);
                        return Box::pin(async move { encode(&reply.await?) });
                    })*
                }
                Target::User(user) => {
                    $(if name == stringify!($user) {
                        let msg: $user = match decode(name, body) {
                            Ok(m) => m,
                            Err(e) => return Box::pin(async move { Err(e) }),
                        };
                        let reply = router.ask_user(&user, msg);
                        return Box::pin(async move { encode(&reply.await?) });
                    })*
                }
            }
            let name = name.to_owned();
            Box::pin(async move { Err(ChatError::internal(format!("peer sent an unknown message {name}"))) })
        }

        /// A `Tell` from a peer: delivered to the user's actor only if it is live (see `Router::tell_live_user`).
        /// A node that does not lead the user's partition (a peer that keeps no replica of it sends to the
        /// first replica, which need not lead) passes a first-hand tell on to the leader.
        pub fn dispatch_tell(router: &Router, to: Target, name: &str, body: &RawValue, forwarded: bool) {
            if let Target::User(user) = to {
                $(if name == stringify!($tell) {
                    if !forwarded && router.forward_tell(&user, name, body) {
                        return;
                    }
                    if let Ok(msg) = decode::<$tell>(name, body) {
                        router.tell_local_live_user(&user, msg);
                    }
                    return;
                })*
            }
            tracing::warn!(name, "peer sent an unknown tell");
        }
    };
}

impl Remote for FetchMany {
    const NAME: &'static str = "FetchMany";
}

remote_messages! {
    conv: [
        Post, Ack, Fetch, Summarize, MarkRead, GetReceipts, Typing, Recall, Friendship,
        CreateGroup, ChangeMembers, LeaveGroup, DescribeGroup,
        EditMessage, React, GetReactors, CheckMember, SetBlock,
        ServerPost, ServerFetch, ServerCreateGroup, ServerChangeMembers, ServerDescribeGroup,
        LookupCid,
    ],
    user: [
        Connect, AddConv, RemoveConv, ListConvs, SetFriend, ListFriends,
        SetBlocked, SetConvSettings, ListConvEntries, DescribeUser, Logout, SetBan, GetConvSettings,
    ],
    tell_user: [Disconnect, PresenceChanged],
}
