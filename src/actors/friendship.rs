//! The friendship state machine of one pair of users. Pure: it maps (state, who acts, operation) to the new
//! state, the friend-index entries each side must hold, and the frames to push. The pair's conversation
//! actor (`dm:A:B`) applies it, so crossing requests meet at one serialization point.

use crate::error::{ChatError, ChatResult};
use crate::ids::UserId;
use crate::net::protocol::{FriendChange, ServerFrame};
use crate::store::{FriendEntry, PairState};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FriendOp {
    Request { note: String },
    Accept,
    Decline,
    Remove,
}

/// What applying an operation changes.
#[derive(Debug, Clone)]
pub struct Transition {
    pub state: PairState,
    /// `(owner, other, entry)`: `owner`'s index entry for `other` (None removes it).
    pub index: Vec<(UserId, UserId, Option<FriendEntry>)>,
    /// Frames for every online device of a user.
    pub pushes: Vec<(UserId, ServerFrame)>,
}

fn friends(me: &UserId, other: &UserId) -> Transition {
    Transition {
        state: PairState::Friends,
        index: vec![
            (me.clone(), other.clone(), Some(FriendEntry::Friend)),
            (other.clone(), me.clone(), Some(FriendEntry::Friend)),
        ],
        pushes: vec![
            (
                me.clone(),
                ServerFrame::Friend {
                    user: other.clone(),
                    state: FriendChange::Added,
                },
            ),
            (
                other.clone(),
                ServerFrame::Friend {
                    user: me.clone(),
                    state: FriendChange::Added,
                },
            ),
        ],
    }
}

fn cleared(me: &UserId, other: &UserId, pushes: Vec<(UserId, ServerFrame)>) -> Transition {
    Transition {
        state: PairState::None,
        index: vec![
            (me.clone(), other.clone(), None),
            (other.clone(), me.clone(), None),
        ],
        pushes,
    }
}

/// Applies `op` by `me` to the pair (`me`, `other`) in `state`.
pub fn apply(
    state: &PairState,
    me: &UserId,
    other: &UserId,
    op: FriendOp,
) -> ChatResult<Transition> {
    let pending_from_other = matches!(state, PairState::Pending { from, .. } if from == other);
    let pending_from_me = matches!(state, PairState::Pending { from, .. } if from == me);
    match op {
        FriendOp::Request { note } => match state {
            PairState::Friends => Ok(Transition {
                state: PairState::Friends,
                index: vec![],
                pushes: vec![],
            }),
            _ if pending_from_other => Ok(friends(me, other)),
            _ => Ok(Transition {
                state: PairState::Pending {
                    from: me.clone(),
                    note: note.clone(),
                },
                index: vec![
                    (
                        me.clone(),
                        other.clone(),
                        Some(FriendEntry::Outgoing { note: note.clone() }),
                    ),
                    (
                        other.clone(),
                        me.clone(),
                        Some(FriendEntry::Incoming { note: note.clone() }),
                    ),
                ],
                pushes: vec![(
                    other.clone(),
                    ServerFrame::FriendRequest {
                        from: me.clone(),
                        note,
                    },
                )],
            }),
        },
        FriendOp::Accept if pending_from_other => Ok(friends(me, other)),
        FriendOp::Decline if pending_from_other => Ok(cleared(me, other, vec![])),
        FriendOp::Accept | FriendOp::Decline => Err(ChatError::not_found(format!(
            "no pending friend request from {other}"
        ))),
        FriendOp::Remove => match state {
            PairState::Friends => Ok(cleared(
                me,
                other,
                vec![
                    (
                        me.clone(),
                        ServerFrame::Friend {
                            user: other.clone(),
                            state: FriendChange::Removed,
                        },
                    ),
                    (
                        other.clone(),
                        ServerFrame::Friend {
                            user: me.clone(),
                            state: FriendChange::Removed,
                        },
                    ),
                ],
            )),
            _ if pending_from_me => Ok(cleared(me, other, vec![])),
            _ => Err(ChatError::not_found(format!("{other} is not a friend"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn u(s: &str) -> UserId {
        UserId::parse(s).expect("valid")
    }

    fn req(note: &str) -> FriendOp {
        FriendOp::Request { note: note.into() }
    }

    #[test]
    fn request_then_accept() {
        let (a, b) = (u("alice"), u("bob"));
        let t = apply(&PairState::None, &a, &b, req("hi")).expect("request");
        assert_eq!(
            t.state,
            PairState::Pending {
                from: a.clone(),
                note: "hi".into()
            }
        );
        assert_eq!(t.pushes.len(), 1);
        assert_eq!(t.pushes[0].0, b);
        assert!(
            apply(&t.state, &a, &b, FriendOp::Accept).is_err(),
            "cannot accept one's own request"
        );
        let t = apply(&t.state, &b, &a, FriendOp::Accept).expect("accept");
        assert_eq!(t.state, PairState::Friends);
        assert_eq!(t.pushes.len(), 2);
        assert!(t
            .index
            .iter()
            .all(|(_, _, e)| *e == Some(FriendEntry::Friend)));
    }

    #[test]
    fn crossing_requests_make_friends() {
        let (a, b) = (u("alice"), u("bob"));
        let t = apply(&PairState::None, &a, &b, req("")).expect("a asks");
        let t = apply(&t.state, &b, &a, req("")).expect("b asks too");
        assert_eq!(t.state, PairState::Friends);
    }

    #[test]
    fn decline_remove_and_errors() {
        let (a, b) = (u("alice"), u("bob"));
        let pending = apply(&PairState::None, &a, &b, req("x"))
            .expect("ask")
            .state;
        let t = apply(&pending, &b, &a, FriendOp::Decline).expect("decline");
        assert_eq!(t.state, PairState::None);
        assert!(t.pushes.is_empty());
        assert_eq!(t.index.len(), 2);
        let withdrawn = apply(&pending, &a, &b, FriendOp::Remove).expect("withdraw");
        assert_eq!(withdrawn.state, PairState::None);
        let e = apply(&PairState::None, &a, &b, FriendOp::Remove).expect_err("not friends");
        assert_eq!(e.code, ErrorCode::NotFound);
        let e = apply(&PairState::None, &a, &b, FriendOp::Decline).expect_err("nothing pending");
        assert_eq!(e.code, ErrorCode::NotFound);
        let t = apply(&PairState::Friends, &b, &a, FriendOp::Remove).expect("remove");
        assert_eq!(t.state, PairState::None);
        assert_eq!(t.pushes.len(), 2);
        let t = apply(&PairState::Friends, &a, &b, req("again")).expect("no-op");
        assert_eq!(t.state, PairState::Friends);
        assert!(t.index.is_empty() && t.pushes.is_empty());
    }
}
