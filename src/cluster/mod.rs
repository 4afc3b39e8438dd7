//! Placement and routing: the consistent-hash [`ring`] says which node owns a key; the [`router`] is the one
//! boundary actors use to reach each other, locally or over the [`peer`] links, with the messages and frames
//! of [`remote`]. [`placement`] is the replicated layout (key → partition → replicas), and
//! [`replication`] runs this node's Raft groups over it (one thread, traffic over the peer links).

pub mod membership;
pub mod peer;
pub mod placement;
pub mod pulls;
pub mod remote;
pub mod replication;
pub mod ring;
pub mod router;

pub use ring::Ring;
pub use router::Router;
