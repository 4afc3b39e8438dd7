//! Placement and routing: the consistent-hash [`ring`] says which node owns a key; the [`router`] is the one
//! boundary actors use to reach each other (it spawns local actors on demand and will forward to remote
//! nodes once peer links exist).

pub mod ring;
pub mod router;

pub use ring::Ring;
pub use router::Router;
