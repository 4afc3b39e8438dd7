//! `UserActor`: one per user, on the leader of the user's partition (its changes proposed to the partition's
//! log like a conversation's; sessions register again when the leader moves). Owns the user's live devices (which session
//! serves each), the user's friend index and conversation index, the user's blocks and settings of each
//! conversation (mute, pin), and presence (none pushed from a blocked user). It never stores messages and
//! never decides friendship or a block (the pair's conversation does); it only fans frames out to the
//! user's devices.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::actors::now_ms;
use crate::actors::session::Outbound;
use crate::cluster::Router;
use crate::error::{ChatError, ChatResult, ErrorCode};
use crate::ids::{ConvId, DeviceId, NodeId, UserId};
use crate::net::protocol::{IncomingRequest, OutgoingRequest, ServerFrame};
use crate::net::ws::WireFrame;
use crate::state::replica::Command;
use crate::state::settings::ConvSettings;
use crate::state::user::{Refusal, UserCommand, UserState, UserWrite};
use crate::store::FriendEntry;

/// A session serving `device` came up on `node`; an older session of the same device is kicked. Sent
/// again for every live session when the user's node comes back (it lost what it knew): a session already
/// known is not kicked. A new session names its token's issue time (`issued_ms`): a banned user, or a
/// token older than the user's last logout, is refused with `unauthorized` (a re-registration names none).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ChatResult<()>")]
pub struct Connect {
    pub device: DeviceId,
    pub session_id: u64,
    pub node: NodeId,
    #[serde(default)]
    pub issued_ms: Option<u64>,
}

/// A session ended (ignored if the device is already served by a newer session). A session is named by
/// its node and its id there: ids count per node, so a device that reconnected to another node can have
/// the same id again, and a late `Disconnect` of its old session must not remove the new one.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub device: DeviceId,
    pub session_id: u64,
    /// The session's node (absent from a node of an older version: then the id alone decides).
    #[serde(default)]
    pub node: Option<NodeId>,
}

/// The user is in `conv` (idempotent); answered once durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct AddConv {
    pub conv: ConvId,
}

/// The user is no longer in `conv` (left or removed); answered once durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct RemoveConv {
    pub conv: ConvId,
}

/// The user's conversations.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Vec<ConvId>")]
pub struct ListConvs;

/// Set the user's friend-index entry for `other` (from the pair's conversation), then push `push` to the
/// user's devices; answered once durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct SetFriend {
    pub other: UserId,
    pub entry: Option<FriendEntry>,
    pub push: Option<WireFrame>,
}

/// Friends and pending requests, for the `friends` frame.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "FriendsList")]
pub struct ListFriends;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FriendsList {
    pub friends: Vec<UserId>,
    pub incoming: Vec<IncomingRequest>,
    pub outgoing: Vec<OutgoingRequest>,
    /// The users this user blocks.
    #[serde(default)]
    pub blocked: Vec<UserId>,
}

/// The user blocks (`on`) `other`, or no longer does (the pair's conversation decided it); answered once
/// durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct SetBlocked {
    pub other: UserId,
    pub on: bool,
}

/// The user's settings of `conv` (fields left out stay as they are), pushed as `conv_settings` to the
/// user's devices but `device`; answered once durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct SetConvSettings {
    pub conv: ConvId,
    pub device: DeviceId,
    pub muted_until: Option<u64>,
    pub pinned: Option<bool>,
}

/// The user's conversations with the user's settings of each (for `convs`).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "Vec<(ConvId, ConvSettings)>")]
pub struct ListConvEntries;

/// The user's settings of one conversation (the webhook sender asks before it announces an
/// `offline_message`: a muted conversation produces none).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "ConvSettings")]
pub struct GetConvSettings {
    pub conv: ConvId,
}

/// A friend came online or went offline.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct PresenceChanged {
    pub user: UserId,
    pub online: bool,
}

/// The user as the server API shows it (`GET /v1/users/U`).
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "UserInfo")]
pub struct DescribeUser;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInfo {
    pub online: bool,
    /// Sorted by device name.
    pub devices: Vec<DeviceInfo>,
    pub banned: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeviceInfo {
    #[schema(value_type = String)]
    pub device: DeviceId,
    #[schema(value_type = String)]
    pub node: NodeId,
    /// When the device's session connected (Unix milliseconds).
    pub since: u64,
}

/// Void every token issued before `at_ms` and close every device (`POST /v1/users/U/logout`); answered
/// once durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct Logout {
    pub at_ms: u64,
}

/// Ban (closing every device) or unban the user; answered once durable.
#[derive(Message, Serialize, Deserialize)]
#[rtype(result = "()")]
pub struct SetBan {
    pub banned: bool,
}

/// How long after a logout or ban the user's actor checks that every older device is gone (see
/// `UserActor::close_devices`), and how many times it looks.
const REVOKE_CHECK: Duration = Duration::from_secs(1);
const REVOKE_ROUNDS: u32 = 3;

/// Where a device's session runs.
struct Device {
    session_id: u64,
    node: NodeId,
    since: u64,
}

/// The user's live devices, sorted by device: a short list (a person has a few) that holds no spare room,
/// since every connected user keeps one (see bench/README.md, "Stop 40": idle connections).
#[derive(Default)]
struct Devices(Vec<(DeviceId, Device)>);

impl Devices {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn get(&self, device: &DeviceId) -> Option<&Device> {
        let at = self.0.binary_search_by(|(d, _)| d.cmp(device)).ok()?;
        self.0.get(at).map(|(_, d)| d)
    }

    /// Adds or replaces `device`; the one replaced is returned.
    fn insert(&mut self, device: DeviceId, new: Device) -> Option<Device> {
        match self.0.binary_search_by(|(d, _)| d.cmp(&device)) {
            Ok(at) => self.0.get_mut(at).map(|(_, d)| std::mem::replace(d, new)),
            Err(at) => {
                self.0.reserve_exact(1);
                self.0.insert(at, (device, new));
                None
            }
        }
    }

    fn remove(&mut self, device: &DeviceId) {
        if let Ok(at) = self.0.binary_search_by(|(d, _)| d.cmp(device)) {
            self.0.remove(at);
            if self.0.is_empty() {
                self.0 = Vec::new();
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&DeviceId, &Device)> {
        self.0.iter().map(|(id, d)| (id, d))
    }

    /// Removes `device` if the session that ended (`session_id` on `node`) is the one serving it now;
    /// true if it did. Without a node (a peer of an older version) the id alone decides.
    fn end_session(&mut self, device: &DeviceId, session_id: u64, node: Option<&NodeId>) -> bool {
        let serving = self
            .get(device)
            .is_some_and(|d| d.session_id == session_id && node.is_none_or(|n| *n == d.node));
        if serving {
            self.remove(device);
        }
        serving
    }
}

pub struct UserActor {
    id: UserId,
    router: Router,
    devices: Devices,
    /// Stops the actor once it has been idle for `actors.idle_s`; runs only while no device is connected.
    idle_check: Option<SpawnHandle>,
    /// The friend index: changed only through [`UserActor::execute`].
    state: UserState,
    /// The conversation index, loaded when first listed and kept in step with the writes from then on.
    convs: Option<HashSet<ConvId>>,
    last_active: Instant,
    /// With replication: changes are proposed to the partition's log (see [`UserActor::execute`]).
    replicated: bool,
    /// Proposals made and applied so far, and who waits for which.
    proposed: u64,
    applied: u64,
    waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// A proposal was lost or the partition moved: nothing more is changed here.
    retired: bool,
}

/// The proposal numbered `0` is applied here.
#[derive(Message)]
#[rtype(result = "()")]
struct Applied(u64);

/// A proposal will not be applied (leadership moved), or this node no longer leads the user's partition:
/// the actor stops; sessions register again with the user's new actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl UserActor {
    pub fn new(id: UserId, router: Router) -> UserActor {
        let state = router.store().user_state(&id).unwrap_or_else(|e| {
            tracing::error!(user = %id, error = %e, "cannot load friends");
            UserState::empty(id.clone())
        });
        let replicated = router
            .replication()
            .is_some_and(|r| r.replicated(id.as_str()));
        UserActor {
            id,
            router,
            devices: Devices::default(),
            idle_check: None,
            state,
            convs: None,
            last_active: Instant::now(),
            replicated,
            proposed: 0,
            applied: 0,
            waiters: Vec::new(),
            retired: false,
        }
    }

    /// Pushes to every connected device of the user, on whichever nodes they are.
    fn push(&self, out: &Outbound) {
        if !self.devices.is_empty() {
            self.router.push_to_user(&self.id, out, None);
        }
    }

    /// Applies `cmd` through the user's core and makes its writes (durable with the next flush; see
    /// [`UserActor::durable`]).
    fn execute(&mut self, cmd: UserCommand, ctx: &mut Context<Self>) {
        if self.retired {
            return;
        }
        let mut writes = Vec::new();
        let proposal = self.replicated.then(|| cmd.clone());
        self.state.apply(cmd, &mut writes);
        if writes.iter().any(|w| matches!(w, UserWrite::Conv { .. })) {
            // The cached list is loaded before its first change and follows every change from then on.
            // Loaded later, from a store that with replication takes a change only once its entry is
            // applied, it would miss a conversation still in flight, for as long as the actor lives.
            let convs = self.convs();
            for write in &writes {
                if let UserWrite::Conv { conv, member } = write {
                    if *member {
                        convs.insert(conv.clone());
                    } else {
                        convs.remove(conv);
                    }
                }
            }
        }
        if let Some(cmd) = proposal {
            if writes.is_empty() {
                return;
            }
            let Some(replication) = self.router.replication() else {
                return;
            };
            self.proposed += 1;
            let epoch = self.proposed;
            let addr = ctx.address();
            let command = Command::User {
                user: self.id.clone(),
                cmd,
            };
            replication.propose(command, Vec::new(), move |result| match result {
                Ok(()) => addr.do_send(Applied(epoch)),
                Err(_) => addr.do_send(Retire),
            });
            return;
        }
        if let Err(e) = self.router.store().write_user(&self.id, &writes) {
            tracing::error!(user = %self.id, error = %e, "cannot write the user's index");
        }
    }

    /// Closes every device of the user, on every node (a logout or a ban); each session's `Disconnect`
    /// then removes it here.
    ///
    /// A session registers for pushes just after this actor accepted its `Connect`, so one whose `Connect`
    /// came a moment before the logout can miss the close. After [`REVOKE_CHECK`] the actor looks again:
    /// while a device that connected before the logout is still here, every device is closed again (a
    /// device that connected since with a new token reconnects at once).
    fn close_devices(&self, ctx: &mut Context<Self>, refusal: Refusal, rounds: u32) {
        let out = Outbound::Revoked {
            reason: refusal.reason().to_owned(),
        };
        self.router.push_to_user(&self.id, &out, None);
        let at = now_ms();
        if rounds == 0 {
            return;
        }
        ctx.run_later(REVOKE_CHECK, move |act, ctx| {
            let still_revoked = match refusal {
                Refusal::Banned => act.state.access.banned,
                Refusal::LoggedOut => true,
            };
            if still_revoked && act.devices.iter().any(|(_, d)| d.since <= at) {
                act.close_devices(ctx, refusal, rounds - 1);
            }
        });
    }

    fn announce_presence(&self, online: bool) {
        for (friend, entry) in &self.state.friends {
            if *entry == FriendEntry::Friend {
                self.router.tell_live_user(
                    friend,
                    PresenceChanged {
                        user: self.id.clone(),
                        online,
                    },
                );
            }
        }
    }

    fn convs(&mut self) -> &mut HashSet<ConvId> {
        let id = &self.id;
        let store = self.router.store();
        self.convs
            .get_or_insert_with(|| match store.user_convs(id) {
                Ok(list) => list.into_iter().collect(),
                Err(e) => {
                    tracing::error!(user = %id, error = %e, "cannot load conversations");
                    HashSet::new()
                }
            })
    }

    /// Resolves once every change made so far is durable: flushed, or with replication applied after its
    /// commit. A change that will not be applied never resolves it: the caller's deadline answers
    /// `unavailable` rather than a false success.
    fn durable(&mut self) -> ResponseFuture<()> {
        if !self.replicated {
            return Box::pin(self.router.store().flusher().flushed());
        }
        let (tx, rx) = oneshot::channel();
        if self.retired {
            drop(tx);
        } else if self.proposed <= self.applied {
            let _ = tx.send(());
        } else {
            self.waiters.push((self.proposed, tx));
        }
        Box::pin(async move {
            if rx.await.is_err() {
                tokio::time::sleep(crate::cluster::router::LOCAL_DEADLINE).await;
            }
        })
    }

    /// Starts the idle check (a user with no device connected). While a device is connected the actor
    /// stays and holds no timer: every connected user has an actor, and a timer is a few hundred bytes.
    fn watch_idle(&mut self, ctx: &mut Context<Self>) {
        if self.idle_check.is_some() {
            return;
        }
        let idle = self.router.config().actors.idle();
        let period = (idle / 2).max(Duration::from_millis(100));
        self.idle_check = Some(ctx.run_interval(period, move |act, ctx| {
            if act.devices.is_empty()
                && act.waiters.is_empty()
                && act.last_active.elapsed() >= idle
                && act.router.release_user(&act.id, &ctx.address())
            {
                ctx.stop();
            }
        }));
    }

    /// Stops the idle check (a device connected).
    fn unwatch_idle(&mut self, ctx: &mut Context<Self>) {
        if let Some(check) = self.idle_check.take() {
            ctx.cancel_future(check);
        }
    }
}

impl Actor for UserActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.watch_idle(ctx);
    }
}

impl Handler<Applied> for UserActor {
    type Result = ();
    fn handle(&mut self, Applied(epoch): Applied, _: &mut Context<Self>) {
        self.applied = self.applied.max(epoch);
        let applied = self.applied;
        for (_, tx) in self.waiters.extract_if(.., |(e, _)| *e <= applied) {
            let _ = tx.send(());
        }
    }
}

impl Handler<Retire> for UserActor {
    type Result = ();
    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        self.retired = true;
        self.waiters.clear();
        self.router.release_user(&self.id, &ctx.address());
        ctx.stop();
    }
}

impl Handler<Connect> for UserActor {
    type Result = ChatResult<()>;
    fn handle(&mut self, msg: Connect, ctx: &mut Context<Self>) -> ChatResult<()> {
        self.last_active = Instant::now();
        if let Some(issued_ms) = msg.issued_ms {
            if let Err(refusal) = self.state.admits(issued_ms) {
                return Err(ChatError::new(ErrorCode::Unauthorized, refusal.reason()));
            }
        }
        let first = self.devices.is_empty();
        let new = Device {
            session_id: msg.session_id,
            node: msg.node,
            since: now_ms(),
        };
        if let Some(old) = self.devices.insert(msg.device.clone(), new) {
            let same = self
                .devices
                .get(&msg.device)
                .is_some_and(|d| d.session_id == old.session_id && d.node == old.node);
            if same {
                // a re-registration of a known session keeps its connect time
                self.devices.insert(msg.device.clone(), old);
            } else {
                self.router.kick(&old.node, &self.id, old.session_id);
            }
        }
        if first {
            self.unwatch_idle(ctx);
            self.announce_presence(true);
            crate::webhooks::events::presence(&self.router, &self.id, true);
        }
        Ok(())
    }
}

impl Handler<Disconnect> for UserActor {
    type Result = ();
    fn handle(&mut self, msg: Disconnect, ctx: &mut Context<Self>) {
        self.last_active = Instant::now();
        let ended = self
            .devices
            .end_session(&msg.device, msg.session_id, msg.node.as_ref());
        if ended && self.devices.is_empty() {
            self.watch_idle(ctx);
            self.announce_presence(false);
            crate::webhooks::events::presence(&self.router, &self.id, false);
        }
    }
}

impl Handler<AddConv> for UserActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: AddConv, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        self.execute(UserCommand::AddConv { conv: msg.conv }, ctx);
        self.durable()
    }
}

impl Handler<RemoveConv> for UserActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: RemoveConv, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        self.execute(UserCommand::RemoveConv { conv: msg.conv }, ctx);
        self.durable()
    }
}

impl Handler<ListConvs> for UserActor {
    type Result = MessageResult<ListConvs>;
    fn handle(&mut self, _: ListConvs, _: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        MessageResult(self.convs().iter().cloned().collect())
    }
}

impl Handler<SetFriend> for UserActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: SetFriend, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        self.execute(
            UserCommand::SetFriend {
                other: msg.other,
                entry: msg.entry,
            },
            ctx,
        );
        if let Some(frame) = msg.push {
            self.push(&Outbound::Frame(frame));
        }
        self.durable()
    }
}

impl Handler<ListFriends> for UserActor {
    type Result = MessageResult<ListFriends>;
    fn handle(&mut self, _: ListFriends, _: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let mut list = FriendsList {
            blocked: self.state.blocked.iter().cloned().collect(),
            ..FriendsList::default()
        };
        for (other, entry) in &self.state.friends {
            match entry {
                FriendEntry::Friend => list.friends.push(other.clone()),
                FriendEntry::Incoming { note } => list.incoming.push(IncomingRequest {
                    from: other.clone(),
                    note: note.clone(),
                }),
                FriendEntry::Outgoing { note } => list.outgoing.push(OutgoingRequest {
                    to: other.clone(),
                    note: note.clone(),
                }),
            }
        }
        MessageResult(list)
    }
}

impl Handler<PresenceChanged> for UserActor {
    type Result = ();
    fn handle(&mut self, msg: PresenceChanged, _: &mut Context<Self>) {
        // Only friends see presence, and not from users this one blocks; the friend index is the authority.
        if self.state.is_friend(&msg.user) && !self.state.blocks(&msg.user) {
            let frame = ServerFrame::Presence {
                user: msg.user,
                online: msg.online,
            };
            self.push(&Outbound::Frame(WireFrame::text(
                frame.kind(),
                &frame.to_json(),
            )));
        }
    }
}

impl Handler<SetBlocked> for UserActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: SetBlocked, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        self.execute(
            UserCommand::Block {
                other: msg.other,
                on: msg.on,
            },
            ctx,
        );
        self.durable()
    }
}

impl Handler<DescribeUser> for UserActor {
    type Result = MessageResult<DescribeUser>;
    fn handle(&mut self, _: DescribeUser, _: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let mut devices: Vec<DeviceInfo> = self
            .devices
            .iter()
            .map(|(device, d)| DeviceInfo {
                device: device.clone(),
                node: d.node.clone(),
                since: d.since,
            })
            .collect();
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        MessageResult(UserInfo {
            online: !devices.is_empty(),
            devices,
            banned: self.state.access.banned,
        })
    }
}

impl Handler<Logout> for UserActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: Logout, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        self.execute(UserCommand::Logout { at_ms: msg.at_ms }, ctx);
        self.close_devices(ctx, Refusal::LoggedOut, REVOKE_ROUNDS);
        self.durable()
    }
}

impl Handler<SetConvSettings> for UserActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: SetConvSettings, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let before = self.state.settings_of(&msg.conv);
        self.execute(
            UserCommand::SetConvSettings {
                conv: msg.conv.clone(),
                muted_until: msg.muted_until,
                pinned: msg.pinned,
            },
            ctx,
        );
        let after = self.state.settings_of(&msg.conv);
        if after != before && !self.devices.is_empty() {
            let frame = ServerFrame::ConvSettings {
                conv: msg.conv,
                muted_until: after.muted_until,
                pinned: after.pinned,
            };
            let out = Outbound::Frame(WireFrame::text(frame.kind(), &frame.to_json()));
            self.router.push_to_user(&self.id, &out, Some(&msg.device));
        }
        self.durable()
    }
}

impl Handler<SetBan> for UserActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: SetBan, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        self.execute(UserCommand::SetBan { banned: msg.banned }, ctx);
        if msg.banned {
            self.close_devices(ctx, Refusal::Banned, REVOKE_ROUNDS);
        }
        self.durable()
    }
}

impl Handler<GetConvSettings> for UserActor {
    type Result = MessageResult<GetConvSettings>;
    fn handle(&mut self, msg: GetConvSettings, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.settings_of(&msg.conv))
    }
}

impl Handler<ListConvEntries> for UserActor {
    type Result = MessageResult<ListConvEntries>;
    fn handle(&mut self, _: ListConvEntries, _: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let convs: Vec<ConvId> = self.convs().iter().cloned().collect();
        MessageResult(
            convs
                .into_iter()
                .map(|c| {
                    let settings = self.state.settings_of(&c);
                    (c, settings)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(session_id: u64) -> Device {
        Device {
            session_id,
            node: NodeId::parse("n1").expect("node"),
            since: session_id,
        }
    }

    #[test]
    fn devices_stay_sorted_replace_in_place_and_hold_no_spare_room() {
        let id = |s: &str| DeviceId::parse(s).expect("device");
        let mut devices = Devices::default();
        assert!(devices.is_empty());
        for (name, session) in [("tablet", 1), ("laptop", 2), ("phone", 3)] {
            assert!(devices.insert(id(name), device(session)).is_none());
            assert_eq!(devices.0.capacity(), devices.0.len(), "no spare room");
        }
        let names: Vec<&str> = devices.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(names, ["laptop", "phone", "tablet"]);
        let old = devices.insert(id("phone"), device(9)).expect("replaced");
        assert_eq!(old.session_id, 3);
        assert_eq!(devices.get(&id("phone")).map(|d| d.session_id), Some(9));
        assert_eq!(devices.iter().count(), 3);
        devices.remove(&id("laptop"));
        devices.remove(&id("watch"));
        assert!(devices.get(&id("laptop")).is_none());
        devices.remove(&id("phone"));
        devices.remove(&id("tablet"));
        assert!(devices.is_empty());
        assert_eq!(devices.0.capacity(), 0, "an empty list frees its room");
    }

    #[test]
    fn a_late_disconnect_ends_only_the_session_it_names() {
        let id = DeviceId::parse("phone").expect("device");
        let (n1, n2) = (
            NodeId::parse("n1").expect("node"),
            NodeId::parse("n2").expect("node"),
        );
        let mut devices = Devices::default();
        // the phone's session 7 on n1 closed; it reconnected to n2, where its session is 7 too
        let on = |node: &NodeId| Device {
            session_id: 7,
            node: node.clone(),
            since: 1,
        };
        devices.insert(id.clone(), on(&n2));
        assert!(
            !devices.end_session(&id, 7, Some(&n1)),
            "n1's session 7 is gone already"
        );
        assert!(
            !devices.end_session(&id, 8, Some(&n2)),
            "another session of n2"
        );
        assert!(devices.get(&id).is_some());
        assert!(devices.end_session(&id, 7, Some(&n2)));
        assert!(devices.is_empty());
        // a peer that names no node: the id alone decides
        devices.insert(id.clone(), on(&n1));
        assert!(devices.end_session(&id, 7, None));
        assert!(!devices.end_session(&id, 7, None), "once");
    }
}
