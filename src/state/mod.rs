//! The pure, deterministic core of Rookery's durable state: what a state change *is*, separated from the
//! actors that decide when to make one and from the store that keeps the result.
//!
//! A conversation's state changes (a message appended with its seq and `cid` dedupe, a read position, a
//! recall, the pair's friendship, a group's creation and membership) are [`conv::ConvCommand`]s. Applying a
//! command to a [`conv::ConvState`] is a function of the state, the command, the [`conv::Rules`] and what the
//! [`conv::History`] holds (the message log and the dedupe entries, too large to keep in memory): it takes no
//! clock (times are in the command, chosen by whoever proposes it), no randomness and no I/O. It answers with
//! an [`conv::Outcome`] for the caller and the list of [`conv::Write`]s the store must make, in that order.
//!
//! That is what replication needs: every replica applies the same commands in the same order and ends with
//! the same state and the same stored keys. It is also what makes the rules testable on their own: the unit
//! tests here and the model test (`tests/state_model.rs`, random command sequences with restarts against a
//! simple reference) exercise the same code the actors run.
//!
//! A user's durable changes (its conversation index, its side of each friendship, its blocks and its own
//! settings of each conversation) are [`user::UserCommand`]s applied to a [`user::UserState`] the same way.
//! [`settings`] holds those per-conversation settings (mute, pin) and the rule other parts of the server
//! ask of them ([`settings::wants_offline_message`]).
//!
//! The core never pushes, never waits for a flush and never touches another key's state: the conversation
//! actor turns outcomes into answers and pushes once the writes are durable.
//!
//! [`replica::Replica`] is what every replica of a partition runs: the partition's committed
//! [`replica::Command`]s (a key and its core command) applied in log order to the node's store, each
//! partition's applied index kept so that a restart replays only what is missing.

pub mod conv;
#[cfg(test)]
mod mem;
pub mod overlay;
pub mod replica;
pub mod settings;
pub mod user;
