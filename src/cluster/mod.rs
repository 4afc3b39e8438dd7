//! Placement and routing: the consistent-hash [`ring`] says which node owns a key; the [`router`] is the one
//! boundary actors use to reach each other, locally or over the [`peer`] links, with the messages and frames
//! of [`remote`]. [`membership`] is the cluster's own record of its members and of where every partition's
//! replicas are, [`placement`] the layout it gives (key → partition → replicas, and where the ring wants
//! them), and [`replication`] runs this node's Raft groups over it (a driver and an apply thread, traffic
//! over the peer links), moving replicas when the membership changes.

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
