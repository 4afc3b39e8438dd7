//! Placement and routing: the consistent-hash [`ring`] says which node owns a key; the [`router`] is the one
//! boundary actors use to reach each other, locally or over the [`peer`] links, with the messages and frames
//! of [`remote`]. [`placement`] is the replicated layout (key → partition → replicas) that replication
//! builds on.

pub mod peer;
pub mod placement;
pub mod pulls;
pub mod remote;
pub mod ring;
pub mod router;

pub use ring::Ring;
pub use router::Router;
