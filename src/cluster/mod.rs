//! Placement and routing: the consistent-hash [`ring`] says which node owns a key; the [`router`] is the one
//! boundary actors use to reach each other, locally or over the [`peer`] links, with the messages and frames
//! of [`remote`].

pub mod peer;
pub mod pulls;
pub mod remote;
pub mod ring;
pub mod router;

pub use ring::Ring;
pub use router::Router;
