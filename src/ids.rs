//! Validated identifiers, checked once at the edge (frame parsing, HTTP, config) and trusted after.
//!
//! Ids are `Arc<str>` inside, so cloning one into an actor message is a reference-count bump.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest user id, device name, group NAME and `cid`.
pub const MAX_ID_LEN: usize = 64;

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {value:?}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidId> {
                if is_name(s) {
                    Ok(Self(Arc::from(s)))
                } else {
                    Err(InvalidId { kind: $kind, value: s.chars().take(80).collect() })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A user id: 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
    UserId,
    "user id"
);
name_id!(
    /// A device name, unique per user: a second connection with the same name replaces the first.
    DeviceId,
    "device name"
);
name_id!(
    /// A node id from `cluster.toml`.
    NodeId,
    "node id"
);

/// A client-chosen message id, unique per sender and conversation (1 to 64 characters, any text).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Cid(Arc<str>);

impl Cid {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let chars = s.chars().count();
        if (1..=MAX_ID_LEN).contains(&chars) && !s.contains('\0') {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidId {
                kind: "cid",
                value: s.chars().take(80).collect(),
            })
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Cid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Cid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A conversation: `dm:A:B` (A < B in byte order) or `g:NAME`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvId {
    Direct {
        a: UserId,
        b: UserId,
        text: Arc<str>,
    },
    Group {
        name: Arc<str>,
        text: Arc<str>,
    },
}

impl ConvId {
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let invalid = || InvalidId {
            kind: "conversation id",
            value: s.chars().take(140).collect(),
        };
        if let Some(rest) = s.strip_prefix("dm:") {
            let (a, b) = rest.split_once(':').ok_or_else(invalid)?;
            let a = UserId::parse(a).map_err(|_| invalid())?;
            let b = UserId::parse(b).map_err(|_| invalid())?;
            if a.as_str().as_bytes() >= b.as_str().as_bytes() {
                return Err(invalid());
            }
            return Ok(ConvId::Direct {
                a,
                b,
                text: Arc::from(s),
            });
        }
        if let Some(name) = s.strip_prefix("g:") {
            if is_name(name) {
                return Ok(ConvId::Group {
                    name: Arc::from(name),
                    text: Arc::from(s),
                });
            }
        }
        Err(invalid())
    }

    /// The direct conversation between two distinct users.
    pub fn direct(x: &UserId, y: &UserId) -> Option<ConvId> {
        let (a, b) = match x.as_str().as_bytes().cmp(y.as_str().as_bytes()) {
            std::cmp::Ordering::Less => (x, y),
            std::cmp::Ordering::Greater => (y, x),
            std::cmp::Ordering::Equal => return None,
        };
        let text: Arc<str> = Arc::from(format!("dm:{a}:{b}"));
        Some(ConvId::Direct {
            a: a.clone(),
            b: b.clone(),
            text,
        })
    }

    pub fn as_str(&self) -> &str {
        match self {
            ConvId::Direct { text, .. } | ConvId::Group { text, .. } => text,
        }
    }

    /// For a direct conversation, the member that is not `me` (None if `me` is not a member).
    pub fn peer_of(&self, me: &UserId) -> Option<&UserId> {
        match self {
            ConvId::Direct { a, b, .. } if a == me => Some(b),
            ConvId::Direct { a, b, .. } if b == me => Some(a),
            _ => None,
        }
    }

    pub fn is_direct(&self) -> bool {
        matches!(self, ConvId::Direct { .. })
    }
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for ConvId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConvId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("A-z_0.9").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a b").is_err());
        assert!(UserId::parse("a:b").is_err());
        assert!(UserId::parse(&"x".repeat(64)).is_ok());
        assert!(UserId::parse(&"x".repeat(65)).is_err());
        assert!(UserId::parse("é").is_err());
    }

    #[test]
    fn conv_ids() {
        let c = ConvId::parse("dm:alice:bob").expect("valid");
        assert!(c.is_direct());
        let alice = UserId::parse("alice").expect("valid");
        assert_eq!(c.peer_of(&alice).map(UserId::as_str), Some("bob"));
        assert!(ConvId::parse("dm:bob:alice").is_err(), "order is A < B");
        assert!(ConvId::parse("dm:alice:alice").is_err());
        assert!(ConvId::parse("dm:alice").is_err());
        assert!(ConvId::parse("dm:a:b:c").is_err());
        assert!(ConvId::parse("g:team").is_ok());
        assert!(ConvId::parse("g:").is_err());
        assert!(ConvId::parse("x:team").is_err());
        // byte order: uppercase sorts before lowercase
        assert!(ConvId::parse("dm:Zed:alice").is_ok());
        let bob = UserId::parse("bob").expect("valid");
        assert_eq!(
            ConvId::direct(&bob, &alice).map(|c| c.to_string()),
            Some("dm:alice:bob".into())
        );
        assert!(ConvId::direct(&bob, &bob).is_none());
    }

    #[test]
    fn cids() {
        assert!(Cid::parse("c-81").is_ok());
        assert!(Cid::parse("").is_err());
        assert!(Cid::parse(&"é".repeat(64)).is_ok());
        assert!(Cid::parse(&"x".repeat(65)).is_err());
    }
}
