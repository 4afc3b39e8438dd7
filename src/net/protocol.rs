//! The client wire protocol (PROTOCOL.md, "WebSocket frames"): one JSON object per text frame, `type` names it.
//!
//! [`parse_client_frame`] turns text into a typed [`ClientFrame`] (or an [`ErrorCode`] and the `rid` to answer
//! with); [`ServerFrame`] serializes every frame the server sends. Stored messages are kept as the JSON the
//! client will see, so `msg` and `msgs` frames are spliced from stored bytes instead of re-encoded.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::{ChatError, ErrorCode};
use crate::ids::{Cid, ConvId, DeviceId, UserId};

/// A request id chosen by the client: a string or an integer, echoed on the reply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Rid(Value);

impl Rid {
    pub fn int(n: i64) -> Rid {
        Rid(Value::from(n))
    }
    fn from_value(v: Value) -> Option<Rid> {
        match &v {
            Value::String(_) => Some(Rid(v)),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(Rid(v)),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Rid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Rid::from_value(Value::deserialize(d)?)
            .ok_or_else(|| serde::de::Error::custom("rid must be a string or an integer"))
    }
}

/// Every frame a client may send. Each variant's fields are exactly the contract's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame of a connection: a token and this device's name.
    Auth { token: String, device: String },
    /// Heartbeat; answered with `pong`.
    Ping,
    /// Post a message; answered with `sent` once it is stored.
    Send {
        cid: Cid,
        conv: ConvId,
        body: Map<String, Value>,
        /// An earlier message of the same conversation this one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        /// Members this message mentions (or everyone, `"*"`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mentions: Option<Vec<Mention>>,
    },
    /// Cumulative acknowledgement of pushed messages up to `seq`.
    Ack { conv: ConvId, seq: u64 },
    /// Pull messages after `after` or just below `before`; answered with `msgs`.
    Sync {
        conv: ConvId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
    },
    /// The user's conversations, most recent first; answered with `convs`.
    Convs,
    /// The user has read `conv` up to `seq`.
    Read { conv: ConvId, seq: u64 },
    /// Who has read message `seq`; answered with `receipts`.
    Receipts {
        conv: ConvId,
        seq: u64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        counts: bool,
    },
    /// Ask `user` to be friends.
    FriendRequest {
        user: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// Accept `user`'s pending request.
    FriendAccept { user: UserId },
    /// Decline `user`'s pending request.
    FriendDecline { user: UserId },
    /// End a friendship (or withdraw one's own pending request).
    FriendRemove { user: UserId },
    /// Friends and pending requests; answered with `friends`.
    Friends,
    /// Create a group; answered with `group`.
    GroupCreate {
        conv: ConvId,
        name: String,
        members: Vec<UserId>,
    },
    /// Add members (owner only); answered with `group`.
    GroupAdd { conv: ConvId, members: Vec<UserId> },
    /// Remove members (owner only); answered with `group`.
    GroupRemove { conv: ConvId, members: Vec<UserId> },
    /// Leave a group; answered with `ok`.
    GroupLeave { conv: ConvId },
    /// A group's description, with its member list when `members` is true.
    GroupInfo {
        conv: ConvId,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        members: bool,
    },
    /// The user is typing in `conv` (not stored).
    Typing { conv: ConvId },
    /// Recall one's own message within `recall_window_s`; answered with `ok`.
    Recall { conv: ConvId, seq: u64 },
    /// Replace the body of one's own message within `edit_window_s`; answered with `ok`.
    Edit {
        conv: ConvId,
        seq: u64,
        body: Map<String, Value>,
    },
    /// Add (`on`) or take back a reaction to message `seq`; answered with `ok`.
    React {
        conv: ConvId,
        seq: u64,
        emoji: String,
        on: bool,
    },
    /// Who reacted to message `seq` with `emoji`; answered with `reactors`.
    Reactors {
        conv: ConvId,
        seq: u64,
        emoji: String,
    },
    /// The user's own settings of a conversation (mute, pin); answered with `ok`.
    ConvSettings {
        conv: ConvId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        muted_until: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pinned: Option<bool>,
    },
    /// Block (`on`) or unblock `user`; answered with `ok`.
    Block { user: UserId, on: bool },
}

impl ClientFrame {
    /// The frame's `type`, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Ping => "ping",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Ack { .. } => "ack",
            ClientFrame::Sync { .. } => "sync",
            ClientFrame::Convs => "convs",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Receipts { .. } => "receipts",
            ClientFrame::FriendRequest { .. } => "friend_request",
            ClientFrame::FriendAccept { .. } => "friend_accept",
            ClientFrame::FriendDecline { .. } => "friend_decline",
            ClientFrame::FriendRemove { .. } => "friend_remove",
            ClientFrame::Friends => "friends",
            ClientFrame::GroupCreate { .. } => "group_create",
            ClientFrame::GroupAdd { .. } => "group_add",
            ClientFrame::GroupRemove { .. } => "group_remove",
            ClientFrame::GroupLeave { .. } => "group_leave",
            ClientFrame::GroupInfo { .. } => "group_info",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Recall { .. } => "recall",
            ClientFrame::Edit { .. } => "edit",
            ClientFrame::React { .. } => "react",
            ClientFrame::Reactors { .. } => "reactors",
            ClientFrame::ConvSettings { .. } => "conv_settings",
            ClientFrame::Block { .. } => "block",
        }
    }
}

/// Every client frame `type`, for metrics labels.
pub const CLIENT_FRAME_KINDS: [&str; 25] = [
    "auth",
    "ping",
    "send",
    "ack",
    "sync",
    "convs",
    "read",
    "receipts",
    "friend_request",
    "friend_accept",
    "friend_decline",
    "friend_remove",
    "friends",
    "group_create",
    "group_add",
    "group_remove",
    "group_leave",
    "group_info",
    "typing",
    "recall",
    "edit",
    "react",
    "reactors",
    "conv_settings",
    "block",
];

#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    rid: Option<Rid>,
    #[serde(flatten)]
    frame: ClientFrame,
}

/// A frame that could not be parsed: the code to answer with and the `rid` to echo, if one was readable.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    pub rid: Option<Rid>,
    /// The frame's `type`, when it had a string one.
    pub kind: Option<String>,
    pub error: ChatError,
}

/// Parses one text frame. Unknown fields are ignored; unknown types, missing or mistyped fields and
/// invalid ids are `bad_request`.
pub fn parse_client_frame(text: &str) -> Result<(Option<Rid>, ClientFrame), FrameError> {
    match serde_json::from_str::<Incoming>(text) {
        Ok(incoming) => Ok((incoming.rid, incoming.frame)),
        Err(err) => Err(classify_parse_error(text, err)),
    }
}

fn classify_parse_error(text: &str, err: serde_json::Error) -> FrameError {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            return FrameError {
                rid: None,
                kind: None,
                error: ChatError::bad_request("frame is not valid JSON"),
            }
        }
    };
    let Value::Object(map) = value else {
        return FrameError {
            rid: None,
            kind: None,
            error: ChatError::bad_request("frame must be a JSON object"),
        };
    };
    let rid = map.get("rid").cloned().and_then(Rid::from_value);
    let message = match map.get("type") {
        None => "frame has no `type`".to_string(),
        Some(Value::String(t)) if !CLIENT_FRAME_KINDS.contains(&t.as_str()) => {
            format!(
                "unknown frame type {:?}",
                t.chars().take(40).collect::<String>()
            )
        }
        Some(Value::String(t)) => {
            format!("invalid `{t}` frame: {}", strip_position(&err.to_string()))
        }
        Some(_) => "`type` must be a string".to_string(),
    };
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .map(|t| t.chars().take(40).collect());
    FrameError {
        rid,
        kind,
        error: ChatError::bad_request(message),
    }
}

fn strip_position(msg: &str) -> &str {
    msg.split(" at line ").next().unwrap_or(msg)
}

/// A message body as it is stored: `body` re-encoded as JSON, refused with `too_large` over `max` bytes
/// (`send`, `edit` and `POST /v1/messages` alike).
pub fn message_body(
    body: serde_json::Map<String, serde_json::Value>,
    max: usize,
) -> crate::error::ChatResult<Box<RawValue>> {
    use crate::error::{ChatError, ErrorCode};
    let json = serde_json::Value::Object(body).to_string();
    if json.len() > max {
        return Err(ChatError::new(
            ErrorCode::TooLarge,
            format!("body is over {max} bytes"),
        ));
    }
    RawValue::from_string(json).map_err(|_| ChatError::bad_request("body is not JSON"))
}

/// One entry of a message's `mentions`: a member, or `"*"` (everyone).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mention {
    All,
    User(UserId),
}

impl Mention {
    /// Does this entry mention `user`?
    pub fn names(&self, user: &UserId) -> bool {
        match self {
            Mention::All => true,
            Mention::User(u) => u == user,
        }
    }

    /// `"*"` or the user id.
    pub fn as_str(&self) -> &str {
        match self {
            Mention::All => "*",
            Mention::User(u) => u.as_str(),
        }
    }
}

impl Serialize for Mention {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Mention {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        if text == "*" {
            return Ok(Mention::All);
        }
        UserId::parse(&text)
            .map(Mention::User)
            .map_err(serde::de::Error::custom)
    }
}

/// A stored (and pushed) message, exactly as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub conv: ConvId,
    pub seq: u64,
    pub from: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<Cid>,
    pub ts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Box<RawValue>>,
    /// The earlier message this one answers (as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// Who this message mentions (as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions: Option<Vec<Mention>>,
    /// When the body was last edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Value>,
}

impl Message {
    /// Does this message mention `user` (by name or `"*"`)?
    pub fn mentions_user(&self, user: &UserId) -> bool {
        self.mentions
            .as_ref()
            .is_some_and(|list| list.iter().any(|m| m.names(user)))
    }
}

/// One entry of a `convs` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConvSummary {
    pub conv: ConvId,
    pub last_seq: u64,
    pub read_seq: u64,
    pub unread: u64,
    pub last: Option<Box<RawValue>>,
    /// Unread messages that mention the user (by name or `"*"`).
    #[serde(default)]
    pub mentions: u64,
    /// The user's mute: until this time (0 when not muted).
    #[serde(default)]
    pub muted_until: u64,
    /// The user pinned this conversation.
    #[serde(default)]
    pub pinned: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncomingRequest {
    pub from: UserId,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutgoingRequest {
    pub to: UserId,
    pub note: String,
}

/// Every frame the server sends (but `msg` and `msgs` in their spliced fast form, see [`msg_frame`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        user: UserId,
        device: DeviceId,
        node: String,
        heartbeat_s: u64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        code: ErrorCode,
        message: String,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
    },
    Kicked,
    Sent {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        cid: Cid,
        conv: ConvId,
        seq: u64,
        ts: u64,
    },
    Msgs {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        conv: ConvId,
        msgs: Vec<Box<RawValue>>,
        last_seq: u64,
    },
    Delivered {
        conv: ConvId,
        seq: u64,
        by: UserId,
    },
    Notify {
        conv: ConvId,
        last_seq: u64,
    },
    Convs {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        convs: Vec<ConvSummary>,
    },
    Read {
        conv: ConvId,
        seq: u64,
        by: UserId,
    },
    Receipts {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        conv: ConvId,
        seq: u64,
        #[serde(flatten)]
        detail: ReceiptDetail,
    },
    Ok {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
    },
    FriendRequest {
        from: UserId,
        note: String,
    },
    Friend {
        user: UserId,
        state: FriendChange,
    },
    Friends {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        friends: Vec<UserId>,
        incoming: Vec<IncomingRequest>,
        outgoing: Vec<OutgoingRequest>,
        blocked: Vec<UserId>,
    },
    Group {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        conv: ConvId,
        name: String,
        owner: UserId,
        count: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<UserId>>,
    },
    Typing {
        conv: ConvId,
        user: UserId,
    },
    Presence {
        user: UserId,
        online: bool,
    },
    Recalled {
        conv: ConvId,
        seq: u64,
        by: UserId,
    },
    /// Message `seq` has a new body (`edited` is when).
    Edited {
        conv: ConvId,
        seq: u64,
        by: UserId,
        body: Box<RawValue>,
        edited: u64,
    },
    /// `user` added (`on`) or took back a reaction.
    Reaction {
        conv: ConvId,
        seq: u64,
        user: UserId,
        emoji: String,
        on: bool,
    },
    /// The users who reacted to message `seq` with `emoji` (sorted, at most 1000).
    Reactors {
        #[serde(skip_serializing_if = "Option::is_none")]
        rid: Option<Rid>,
        conv: ConvId,
        seq: u64,
        emoji: String,
        users: Vec<UserId>,
    },
    /// The user's settings of `conv` changed (on another of the user's devices).
    ConvSettings {
        conv: ConvId,
        muted_until: u64,
        pinned: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReceiptDetail {
    Lists {
        read: Vec<UserId>,
        unread: Vec<UserId>,
    },
    Counts {
        read_count: u64,
        unread_count: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FriendChange {
    Added,
    Removed,
}

impl ServerFrame {
    /// The frame's `type`, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Kicked => "kicked",
            ServerFrame::Sent { .. } => "sent",
            ServerFrame::Msgs { .. } => "msgs",
            ServerFrame::Delivered { .. } => "delivered",
            ServerFrame::Notify { .. } => "notify",
            ServerFrame::Convs { .. } => "convs",
            ServerFrame::Read { .. } => "read",
            ServerFrame::Receipts { .. } => "receipts",
            ServerFrame::Ok { .. } => "ok",
            ServerFrame::FriendRequest { .. } => "friend_request",
            ServerFrame::Friend { .. } => "friend",
            ServerFrame::Friends { .. } => "friends",
            ServerFrame::Group { .. } => "group",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Recalled { .. } => "recalled",
            ServerFrame::Edited { .. } => "edited",
            ServerFrame::Reaction { .. } => "reaction",
            ServerFrame::Reactors { .. } => "reactors",
            ServerFrame::ConvSettings { .. } => "conv_settings",
        }
    }

    pub fn error(rid: Option<Rid>, error: &ChatError) -> ServerFrame {
        ServerFrame::Error {
            rid,
            code: error.code,
            message: error.message.clone(),
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(r#"{{"type":"error","code":"internal","message":"cannot encode frame: {e}"}}"#)
        })
    }
}

/// Every server frame `type`, for metrics labels (`msg` is the spliced push).
pub const SERVER_FRAME_KINDS: [&str; 24] = [
    "welcome",
    "error",
    "pong",
    "kicked",
    "sent",
    "msg",
    "msgs",
    "delivered",
    "notify",
    "convs",
    "read",
    "receipts",
    "ok",
    "friend_request",
    "friend",
    "friends",
    "group",
    "typing",
    "presence",
    "recalled",
    "edited",
    "reaction",
    "reactors",
    "conv_settings",
];

/// Encodes a message for storage: the exact JSON object clients receive.
pub fn encode_message(msg: &Message) -> String {
    serde_json::to_string(msg).unwrap_or_else(|_| String::from("{}"))
}

/// Turns a stored message (`{"conv":...}`) into its `msg` push frame without re-encoding it.
pub fn msg_frame(stored: &str) -> String {
    let inner = stored.strip_prefix('{').unwrap_or(stored);
    let mut out = String::with_capacity(stored.len() + 14);
    out.push_str("{\"type\":\"msg\",");
    out.push_str(inner);
    out
}

/// A stored message with its reaction counts (`"reactions":{"👍":3}`) spliced in, as `sync` returns it;
/// unchanged when there are none or the message was recalled.
pub fn with_reactions(stored: String, counts: &std::collections::BTreeMap<String, u64>) -> String {
    let counts: Map<String, Value> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(e, n)| (e.clone(), Value::from(*n)))
        .collect();
    if counts.is_empty() || is_recalled(&stored) {
        return stored;
    }
    let Some(head) = stored.strip_suffix('}') else {
        return stored;
    };
    let mut out = String::with_capacity(stored.len() + 32);
    out.push_str(head);
    out.push_str(",\"reactions\":");
    out.push_str(&Value::Object(counts).to_string());
    out.push('}');
    out
}

/// Is this stored message recalled? (`recalled` is its last field but `system`, which no body can fake.)
pub fn is_recalled(stored: &str) -> bool {
    stored.ends_with("\"recalled\":true}") || stored.contains("\"recalled\":true,\"system\":")
}

/// Wraps stored message JSON for a `msgs` or `convs` reply (the bytes were produced by [`encode_message`]).
pub fn raw(stored: String) -> Option<Box<RawValue>> {
    RawValue::from_string(stored).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(text: &str) -> ClientFrame {
        let (rid, frame) = parse_client_frame(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
        let mut reencoded = serde_json::to_value(&frame).expect("encode");
        if let Some(rid) = rid {
            reencoded["rid"] = rid.0;
        }
        let original: Value = serde_json::from_str(text).expect("json");
        assert_eq!(original, reencoded, "round trip of {text}");
        frame
    }

    /// Every client frame example of PROTOCOL.md, verbatim.
    #[test]
    fn client_examples_from_protocol_md() {
        for text in [
            r#"{"type":"auth","token":"T","device":"phone"}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"send","rid":1,"cid":"c-81","conv":"dm:alice:bob","body":{"text":"hi"}}"#,
            r#"{"type":"ack","conv":"dm:alice:bob","seq":7}"#,
            r#"{"type":"sync","rid":2,"conv":"dm:alice:bob","after":5,"limit":100}"#,
            r#"{"type":"sync","rid":2,"conv":"dm:alice:bob","before":100}"#,
            r#"{"type":"convs","rid":3}"#,
            r#"{"type":"read","conv":"dm:alice:bob","seq":7}"#,
            r#"{"type":"receipts","rid":4,"conv":"g:team","seq":7}"#,
            r#"{"type":"receipts","rid":4,"conv":"g:team","seq":7,"counts":true}"#,
            r#"{"type":"friend_request","rid":5,"user":"bob","note":"hi"}"#,
            r#"{"type":"friend_accept","user":"alice"}"#,
            r#"{"type":"friend_decline","user":"alice"}"#,
            r#"{"type":"friend_remove","user":"bob"}"#,
            r#"{"type":"friends","rid":6}"#,
            r#"{"type":"group_create","rid":7,"conv":"g:team","name":"Team","members":["bob"]}"#,
            r#"{"type":"group_add","conv":"g:team","members":["carol"]}"#,
            r#"{"type":"group_remove","conv":"g:team","members":["carol"]}"#,
            r#"{"type":"group_leave","conv":"g:team"}"#,
            r#"{"type":"group_info","rid":8,"conv":"g:team","members":true}"#,
            r#"{"type":"typing","conv":"dm:alice:bob"}"#,
            r#"{"type":"recall","rid":9,"conv":"dm:alice:bob","seq":7}"#,
            r#"{"type":"send","rid":1,"cid":"c-82","conv":"g:team","body":{"text":"hi"},"reply_to":7,"mentions":["bob","carol"]}"#,
            r#"{"type":"send","rid":1,"cid":"c-83","conv":"g:team","body":{"text":"all"},"mentions":["*"]}"#,
            r#"{"type":"edit","rid":1,"conv":"dm:alice:bob","seq":7,"body":{"text":"fixed"}}"#,
            r#"{"type":"react","rid":1,"conv":"dm:alice:bob","seq":7,"emoji":"👍","on":true}"#,
            r#"{"type":"react","rid":1,"conv":"dm:alice:bob","seq":7,"emoji":"👍","on":false}"#,
            r#"{"type":"reactors","rid":2,"conv":"dm:alice:bob","seq":7,"emoji":"👍"}"#,
            r#"{"type":"conv_settings","rid":1,"conv":"g:team","muted_until":1763800000123,"pinned":true}"#,
            r#"{"type":"conv_settings","rid":1,"conv":"g:team","muted_until":0}"#,
            r#"{"type":"conv_settings","rid":1,"conv":"g:team","pinned":false}"#,
            r#"{"type":"block","rid":1,"user":"bob","on":true}"#,
        ] {
            roundtrip(text);
        }
        assert_eq!(roundtrip(r#"{"type":"ping","rid":"x"}"#), ClientFrame::Ping);
    }

    #[test]
    fn bad_frames_are_bad_requests_with_their_rid() {
        let cases = [
            ("not json", None),
            ("[1,2]", None),
            (r#"{"rid":3}"#, Some(json!(3))),
            (r#"{"type":"fly","rid":"r1"}"#, Some(json!("r1"))),
            (
                r#"{"type":"send","rid":4,"conv":"dm:alice:bob","body":{}}"#,
                Some(json!(4)),
            ),
            (
                r#"{"type":"send","rid":5,"cid":"c","conv":"dm:bob:alice","body":{}}"#,
                Some(json!(5)),
            ),
            (
                r#"{"type":"send","rid":6,"cid":"c","conv":"dm:alice:bob","body":"text"}"#,
                Some(json!(6)),
            ),
            (r#"{"type":"ack","conv":"dm:alice:bob","seq":-1}"#, None),
            (r#"{"type":"ping","rid":1.5}"#, None),
            (
                r#"{"type":"send","rid":7,"cid":"c","conv":"g:team","body":{},"mentions":["a b"]}"#,
                Some(json!(7)),
            ),
            (
                r#"{"type":"send","rid":8,"cid":"c","conv":"g:team","body":{},"reply_to":-1}"#,
                Some(json!(8)),
            ),
            (
                r#"{"type":"react","rid":9,"conv":"g:team","seq":1,"emoji":"x"}"#,
                Some(json!(9)),
            ),
            (r#"{"type":"block","rid":10,"user":"bob"}"#, Some(json!(10))),
            (
                r#"{"type":"edit","rid":11,"conv":"g:team","seq":1,"body":"x"}"#,
                Some(json!(11)),
            ),
        ];
        for (text, rid) in cases {
            let err = parse_client_frame(text).expect_err(text);
            assert_eq!(err.error.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(err.rid.map(|r| r.0), rid, "{text}");
        }
    }

    fn conv() -> ConvId {
        ConvId::parse("dm:alice:bob").expect("valid")
    }
    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    /// Every server frame example of PROTOCOL.md, produced by the encoder.
    #[test]
    fn server_examples_from_protocol_md() {
        let cases: Vec<(ServerFrame, Value)> = vec![
            (
                ServerFrame::Welcome {
                    rid: None,
                    user: user("alice"),
                    device: DeviceId::parse("phone").expect("valid"),
                    node: "n1".into(),
                    heartbeat_s: 30,
                },
                json!({"type":"welcome","user":"alice","device":"phone","node":"n1","heartbeat_s":30}),
            ),
            (ServerFrame::Kicked, json!({"type":"kicked"})),
            (ServerFrame::Pong { rid: None }, json!({"type":"pong"})),
            (
                ServerFrame::Sent {
                    rid: Some(Rid::int(1)),
                    cid: Cid::parse("c-81").expect("valid"),
                    conv: conv(),
                    seq: 7,
                    ts: 1_763_800_000_123,
                },
                json!({"type":"sent","rid":1,"cid":"c-81","conv":"dm:alice:bob","seq":7,"ts":1_763_800_000_123u64}),
            ),
            (
                ServerFrame::Delivered {
                    conv: conv(),
                    seq: 7,
                    by: user("bob"),
                },
                json!({"type":"delivered","conv":"dm:alice:bob","seq":7,"by":"bob"}),
            ),
            (
                ServerFrame::Notify {
                    conv: conv(),
                    last_seq: 9,
                },
                json!({"type":"notify","conv":"dm:alice:bob","last_seq":9}),
            ),
            (
                ServerFrame::Read {
                    conv: conv(),
                    seq: 7,
                    by: user("alice"),
                },
                json!({"type":"read","conv":"dm:alice:bob","seq":7,"by":"alice"}),
            ),
            (
                ServerFrame::Receipts {
                    rid: Some(Rid::int(4)),
                    conv: conv(),
                    seq: 7,
                    detail: ReceiptDetail::Lists {
                        read: vec![user("bob")],
                        unread: vec![],
                    },
                },
                json!({"type":"receipts","rid":4,"conv":"dm:alice:bob","seq":7,"read":["bob"],"unread":[]}),
            ),
            (
                ServerFrame::Receipts {
                    rid: None,
                    conv: conv(),
                    seq: 7,
                    detail: ReceiptDetail::Counts {
                        read_count: 1,
                        unread_count: 0,
                    },
                },
                json!({"type":"receipts","conv":"dm:alice:bob","seq":7,"read_count":1,"unread_count":0}),
            ),
            (
                ServerFrame::Ok {
                    rid: Some(Rid::int(5)),
                },
                json!({"type":"ok","rid":5}),
            ),
            (
                ServerFrame::FriendRequest {
                    from: user("alice"),
                    note: "hi".into(),
                },
                json!({"type":"friend_request","from":"alice","note":"hi"}),
            ),
            (
                ServerFrame::Friend {
                    user: user("bob"),
                    state: FriendChange::Added,
                },
                json!({"type":"friend","user":"bob","state":"added"}),
            ),
            (
                ServerFrame::Friends {
                    rid: Some(Rid::int(6)),
                    friends: vec![user("bob")],
                    incoming: vec![IncomingRequest {
                        from: user("carol"),
                        note: "yo".into(),
                    }],
                    outgoing: vec![OutgoingRequest {
                        to: user("dave"),
                        note: "".into(),
                    }],
                    blocked: vec![user("eve")],
                },
                json!({"type":"friends","rid":6,"friends":["bob"],"incoming":[{"from":"carol","note":"yo"}],"outgoing":[{"to":"dave","note":""}],"blocked":["eve"]}),
            ),
            (
                ServerFrame::Edited {
                    conv: conv(),
                    seq: 7,
                    by: user("alice"),
                    body: raw(r#"{"text":"fixed"}"#.into()).expect("raw"),
                    edited: 1_763_800_000_999,
                },
                json!({"type":"edited","conv":"dm:alice:bob","seq":7,"by":"alice","body":{"text":"fixed"},"edited":1_763_800_000_999u64}),
            ),
            (
                ServerFrame::Reaction {
                    conv: conv(),
                    seq: 7,
                    user: user("bob"),
                    emoji: "👍".into(),
                    on: true,
                },
                json!({"type":"reaction","conv":"dm:alice:bob","seq":7,"user":"bob","emoji":"👍","on":true}),
            ),
            (
                ServerFrame::Reactors {
                    rid: Some(Rid::int(2)),
                    conv: conv(),
                    seq: 7,
                    emoji: "👍".into(),
                    users: vec![user("alice"), user("bob")],
                },
                json!({"type":"reactors","rid":2,"conv":"dm:alice:bob","seq":7,"emoji":"👍","users":["alice","bob"]}),
            ),
            (
                ServerFrame::ConvSettings {
                    conv: conv(),
                    muted_until: 1_763_800_000_123,
                    pinned: true,
                },
                json!({"type":"conv_settings","conv":"dm:alice:bob","muted_until":1_763_800_000_123u64,"pinned":true}),
            ),
            (
                ServerFrame::Convs {
                    rid: Some(Rid::int(3)),
                    convs: vec![ConvSummary {
                        conv: conv(),
                        last_seq: 9,
                        read_seq: 7,
                        unread: 2,
                        last: None,
                        mentions: 1,
                        muted_until: 0,
                        pinned: true,
                    }],
                },
                json!({"type":"convs","rid":3,"convs":[{"conv":"dm:alice:bob","last_seq":9,"read_seq":7,"unread":2,"last":null,"mentions":1,"muted_until":0,"pinned":true}]}),
            ),
            (
                ServerFrame::Group {
                    rid: Some(Rid::int(7)),
                    conv: ConvId::parse("g:team").expect("valid"),
                    name: "Team".into(),
                    owner: user("alice"),
                    count: 2,
                    members: None,
                },
                json!({"type":"group","rid":7,"conv":"g:team","name":"Team","owner":"alice","count":2}),
            ),
            (
                ServerFrame::Typing {
                    conv: conv(),
                    user: user("bob"),
                },
                json!({"type":"typing","conv":"dm:alice:bob","user":"bob"}),
            ),
            (
                ServerFrame::Presence {
                    user: user("bob"),
                    online: true,
                },
                json!({"type":"presence","user":"bob","online":true}),
            ),
            (
                ServerFrame::Recalled {
                    conv: conv(),
                    seq: 7,
                    by: user("alice"),
                },
                json!({"type":"recalled","conv":"dm:alice:bob","seq":7,"by":"alice"}),
            ),
            (
                ServerFrame::error(Some(Rid::int(1)), &ChatError::forbidden("not a member")),
                json!({"type":"error","rid":1,"code":"forbidden","message":"not a member"}),
            ),
        ];
        for (frame, expected) in cases {
            let got: Value = serde_json::from_str(&frame.to_json()).expect("json");
            assert_eq!(got, expected);
            assert_eq!(got["type"], frame.kind());
        }
    }

    #[test]
    fn messages_splice_into_msg_and_msgs() {
        let msg = Message {
            conv: conv(),
            seq: 7,
            from: user("alice"),
            cid: Some(Cid::parse("c-81").expect("valid")),
            ts: 1_763_800_000_123,
            body: raw(r#"{"text":"hi"}"#.to_string()),
            reply_to: None,
            mentions: None,
            edited: None,
            recalled: false,
            system: None,
        };
        let stored = encode_message(&msg);
        let example = json!({"conv":"dm:alice:bob","seq":7,"from":"alice","cid":"c-81","ts":1_763_800_000_123u64,"body":{"text":"hi"}});
        assert_eq!(
            serde_json::from_str::<Value>(&stored).expect("json"),
            example
        );
        let mut pushed = example.clone();
        pushed["type"] = json!("msg");
        assert_eq!(
            serde_json::from_str::<Value>(&msg_frame(&stored)).expect("json"),
            pushed
        );

        let msgs = ServerFrame::Msgs {
            rid: Some(Rid::int(2)),
            conv: conv(),
            msgs: vec![raw(stored).expect("raw")],
            last_seq: 7,
        };
        let got: Value = serde_json::from_str(&msgs.to_json()).expect("json");
        assert_eq!(
            got,
            json!({"type":"msgs","rid":2,"conv":"dm:alice:bob","msgs":[example],"last_seq":7})
        );

        let recalled = Message {
            body: None,
            recalled: true,
            ..msg
        };
        let got: Value = serde_json::from_str(&encode_message(&recalled)).expect("json");
        assert_eq!(got["recalled"], json!(true));
        assert!(got.get("body").is_none());
    }

    #[test]
    fn replies_mentions_edits_and_reactions_in_stored_messages() {
        let msg = Message {
            conv: conv(),
            seq: 8,
            from: user("alice"),
            cid: Some(Cid::parse("c-82").expect("valid")),
            ts: 1_763_800_000_123,
            body: raw(r#"{"text":"fixed"}"#.to_string()),
            reply_to: Some(7),
            mentions: Some(vec![Mention::User(user("bob")), Mention::All]),
            edited: Some(1_763_800_000_999),
            recalled: false,
            system: None,
        };
        assert!(msg.mentions_user(&user("carol")), "`*` mentions everyone");
        let stored = encode_message(&msg);
        let counts: std::collections::BTreeMap<String, u64> =
            [("👍".to_string(), 3), ("ok".to_string(), 0)].into();
        let got: Value =
            serde_json::from_str(&with_reactions(stored.clone(), &counts)).expect("json");
        assert_eq!(
            got,
            json!({"conv":"dm:alice:bob","seq":8,"from":"alice","cid":"c-82","ts":1_763_800_000_123u64,
                   "body":{"text":"fixed"},"reply_to":7,"mentions":["bob","*"],"edited":1_763_800_000_999u64,
                   "reactions":{"👍":3}})
        );
        assert_eq!(with_reactions(stored.clone(), &Default::default()), stored);
        let recalled = Message {
            body: None,
            recalled: true,
            ..msg
        };
        let stored = encode_message(&recalled);
        assert!(is_recalled(&stored));
        assert_eq!(
            with_reactions(stored.clone(), &counts),
            stored,
            "a recalled message shows none"
        );
        // a body cannot pass for a recalled message
        let tricky = encode_message(&Message {
            body: raw(r#"{"recalled":true}"#.to_string()),
            recalled: false,
            mentions: None,
            edited: None,
            ..recalled
        });
        assert!(!is_recalled(&tricky));
    }
}

/// Fuzzing the client-frame parser (issue 13): any text, and JSON objects built from the contract's own
/// types and field names with values of every shape. Every outcome is a frame that survives a round trip
/// or a `bad_request` (with the `rid` when one was readable). Longer: `PROPTEST_CASES=100000 cargo test
/// --release fuzz`.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const FIELDS: [&str; 22] = [
        "rid", "token", "device", "cid", "conv", "body", "seq", "after", "before", "limit", "user",
        "note", "name", "members", "counts", "text", "emoji", "on", "reply_to", "mentions", "type",
        "pinned",
    ];

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            prop::sample::select(vec![
                0u64,
                1,
                u64::from(u32::MAX),
                i64::MAX as u64,
                u64::MAX
            ])
            .prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            prop::sample::select(vec![
                "alice",
                "bob",
                "dm:alice:bob",
                "dm:bob:alice",
                "g:team",
                "g:",
                "",
                "a b",
                "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "\u{0}",
                "\u{1f600}",
                "c-1",
            ])
            .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        scalar().prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(prop::sample::select(FIELDS.to_vec()), inner, 0..4)
                    .prop_map(|m| Value::Object(
                        m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                    )),
            ]
        })
    }

    /// An object shaped like a client frame: a known (or unknown) type and some of the contract's fields.
    fn frame_like() -> impl Strategy<Value = String> {
        (
            prop_oneof![
                prop::sample::select(CLIENT_FRAME_KINDS.to_vec()).prop_map(Value::from),
                scalar(),
            ],
            prop::collection::btree_map(prop::sample::select(FIELDS.to_vec()), value(), 0..7),
        )
            .prop_map(|(kind, fields)| {
                let mut map: Map<String, Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                map.insert("type".into(), kind);
                Value::Object(map).to_string()
            })
    }

    fn check(text: &str) -> Result<(), TestCaseError> {
        match parse_client_frame(text) {
            Ok((_, frame)) => {
                prop_assert!(CLIENT_FRAME_KINDS.contains(&frame.kind()));
                let again = serde_json::to_string(&frame).expect("a parsed frame serializes");
                let (_, back) = parse_client_frame(&again)
                    .map_err(|e| TestCaseError::fail(format!("{again}: {e:?}")))?;
                prop_assert_eq!(back, frame);
            }
            Err(e) => {
                prop_assert_eq!(e.error.code, ErrorCode::BadRequest);
                if let Some(rid) = &e.rid {
                    prop_assert!(rid.0.is_string() || rid.0.is_i64() || rid.0.is_u64());
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        #[test]
        fn fuzz_client_frame_parser_any_text(text in ".{0,200}") {
            check(&text)?;
        }

        #[test]
        fn fuzz_client_frame_parser_frame_like_json(text in frame_like()) {
            check(&text)?;
        }
    }
}
