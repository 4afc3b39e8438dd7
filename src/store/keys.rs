//! The catalogue of sled trees and their key layouts. Keys are big-endian so byte order is `seq` order;
//! ids never contain `0x00` (they are validated), so `0x00` separates the parts of a key.
//!
//! Every key of `conv_log` and `user_index` that belongs to a conversation or a user (all but `A` and `o`)
//! starts with a head: `0x01` then the owner's slot:u16 ([`slot_of`]: its hash modulo 65,536; its
//! partition is the slot modulo `cluster.partitions`). So the keys of one partition are a few ranges of
//! each tree, one per slot: a partition's snapshot and its deletion read those ranges, not the store. The
//! table shows the keys after the head.
//!
//! | tree         | key                                   | value                                  |
//! |--------------|---------------------------------------|----------------------------------------|
//! | `conv_log`   | `m` conv `\0` seq:u64                 | the message JSON as clients see it     |
//! | `conv_log`   | `c` conv `\0` sender `\0` cid         | seq:u64 ts:u64 (dedupe of `send`)      |
//! | `conv_log`   | `r` conv `\0` user                    | read position seq:u64                  |
//! | `conv_log`   | `p` conv                              | friendship of a direct pair (JSON)     |
//! | `conv_log`   | `G` conv                              | a group's name, owner (JSON)           |
//! | `conv_log`   | `B` conv `\0` user                    | empty: the user belongs to the group   |
//! | `conv_log`   | `A` partition:u32                     | last applied log index:u64 (replicas)  |
//! | `conv_log`   | `e` conv `\0` seq:u64 emoji           | count:u64 of users holding the reaction|
//! | `conv_log`   | `E` conv `\0` seq:u64 emoji `\0` user  | empty: the user holds it (`reactors`)  |
//! | `conv_log`   | `h` conv `\0` seq:u64 user `\0` emoji  | empty: the same, by user (the limit)   |
//! | `conv_log`   | `n` conv `\0` user-or-`*` `\0` seq:u64 | empty: message seq mentions the user   |
//! | `conv_log`   | `k` conv `\0` user                    | empty: the user blocks the pair's other|
//! | `conv_log`   | `o` id:u64                            | a webhook event: enqueued ms:u64, JSON (the outbox) |
//! | `user_index` | `c` user `\0` conv                    | empty: the user is in this conversation|
//! | `user_index` | `f` user `\0` other                   | friend entry (JSON)                    |
//! | `user_index` | `b` user `\0` other                   | empty: the user blocks other           |
//! | `user_index` | `s` user `\0` conv                    | the user's settings of conv (JSON)     |
//! | `user_index` | `a` user                              | access: tokens void before, ban (JSON) |
//! | `user_index` | `A` partition:u32                     | last applied log index:u64 (replicas)  |
//! | `media`      | `m` media id                          | stored content (JSON)                  |
//! | `media`      | `h` sha256 hex                        | media id (content stored once)         |
//! | `media`      | `u` upload id                         | unfinished upload (JSON)               |
//! | `media`      | `p` owner `\0` sha256 `\0` size:u64    | upload id (resume by posting again)    |
//! | `media`      | `o` sha256 `\0` user                  | empty: the user has stored or proven it |
//! | `meta`       | `partitions`                          | the partition count u32 the data was created with |
//!
//! Reactions and mentions are keyed beside the messages, never inside them: a reaction changes one counter
//! and two set entries, a mention one entry per mentioned user (`*` once for everyone). An emoji contains no
//! control character (validated), so `0x00` ends it too.
//!
//! A message's dedupe entry is written before the message (see `Store::append`), and trusted only when the
//! message at its seq carries the same sender and cid, so a crash between the two writes cannot duplicate or
//! misattribute a message.

use crate::cluster::placement::slot_of;

pub const CONV_LOG: &str = "conv_log";
pub const USER_INDEX: &str = "user_index";
pub const MEDIA: &str = "media";
pub const META: &str = "meta";

/// `meta`: the key layout of this node's data ([`LAYOUT`]; none: the first, without heads).
pub const META_LAYOUT: &[u8] = b"layout";
/// The key layout written now: keys with an owner start with its head.
pub const LAYOUT: u32 = 2;

/// The first byte of a key that belongs to a conversation or a user.
pub const OWNED: u8 = 0x01;
/// The head's length: [`OWNED`] and the slot.
pub const HEAD: usize = 3;

/// `meta`: the partition count this node's data was created with.
pub const META_PARTITIONS: &[u8] = b"partitions";
/// The cluster's membership record as this node last applied it (JSON).
pub const META_MEMBERSHIP: &[u8] = b"membership";

/// `A` partition:u32 in `conv_log` and in `user_index`: the last Raft log index of that partition whose
/// conversation (user) command that tree holds, written in the same batch as the command's writes.
pub fn applied(partition: u32) -> Vec<u8> {
    let mut key = vec![b'A'];
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

const MSG: u8 = b'm';
/// The webhook outbox's tag in `conv_log` (beside the messages, so they share a batch).
pub const OUTBOX: u8 = b'o';
const CID: u8 = b'c';
const READ: u8 = b'r';
const PAIR: u8 = b'p';
const USER_CONV: u8 = b'c';
const USER_FRIEND: u8 = b'f';

/// A key of `conv_log` or `user_index` owned by `parts[0]` (a conversation or a user): the head, the tag,
/// then the parts.
fn key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = HEAD + 1 + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut k = Vec::with_capacity(len + 8);
    k.push(OWNED);
    k.extend_from_slice(&slot_of(parts.first().copied().unwrap_or_default()).to_be_bytes());
    k.push(tag);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// A key of the `media` tree (node-local: no head).
fn media_key(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len = 1 + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.push(tag);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// `m` conv `\0` (the prefix of every message of `conv`).
pub fn msg_prefix(conv: &str) -> Vec<u8> {
    let mut k = key(MSG, &[conv.as_bytes()]);
    k.push(0);
    k
}

pub fn msg(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = msg_prefix(conv);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The seq at the end of a message key.
pub fn seq_of_msg_key(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

pub fn cid(conv: &str, sender: &str, cid: &str) -> Vec<u8> {
    key(CID, &[conv.as_bytes(), sender.as_bytes(), cid.as_bytes()])
}

pub fn read_prefix(conv: &str) -> Vec<u8> {
    let mut k = key(READ, &[conv.as_bytes()]);
    k.push(0);
    k
}

pub fn read(conv: &str, user: &str) -> Vec<u8> {
    let mut k = read_prefix(conv);
    k.extend_from_slice(user.as_bytes());
    k
}

pub fn pair(conv: &str) -> Vec<u8> {
    key(PAIR, &[conv.as_bytes()])
}

pub fn group(conv: &str) -> Vec<u8> {
    key(b'G', &[conv.as_bytes()])
}

pub fn member_prefix(conv: &str) -> Vec<u8> {
    let mut k = key(b'B', &[conv.as_bytes()]);
    k.push(0);
    k
}

pub fn member(conv: &str, user: &str) -> Vec<u8> {
    let mut k = member_prefix(conv);
    k.extend_from_slice(user.as_bytes());
    k
}

/// `e` conv `\0` seq (the counts of one message; the start of a range over messages).
pub fn reaction_count_prefix(conv: &str, seq: u64) -> Vec<u8> {
    let mut k = key(b'e', &[conv.as_bytes()]);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn reaction_count(conv: &str, seq: u64, emoji: &str) -> Vec<u8> {
    let mut k = reaction_count_prefix(conv, seq);
    k.extend_from_slice(emoji.as_bytes());
    k
}

/// The seq and emoji of a [`reaction_count`] key of `conv`.
pub fn parse_reaction_count(conv: &str, key: &[u8]) -> Option<(u64, String)> {
    let at = HEAD + 1 + conv.len() + 1;
    let seq = parse_u64(key, at)?;
    let emoji = std::str::from_utf8(key.get(at + 8..)?).ok()?;
    Some((seq, emoji.to_string()))
}

/// `E` conv `\0` seq emoji `\0` (the users holding one reaction, sorted).
pub fn reactor_prefix(conv: &str, seq: u64, emoji: &str) -> Vec<u8> {
    let mut k = key(b'E', &[conv.as_bytes()]);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(emoji.as_bytes());
    k.push(0);
    k
}

pub fn reactor(conv: &str, seq: u64, emoji: &str, user: &str) -> Vec<u8> {
    let mut k = reactor_prefix(conv, seq, emoji);
    k.extend_from_slice(user.as_bytes());
    k
}

/// `h` conv `\0` seq user `\0` (the emoji one user holds on one message).
pub fn held_prefix(conv: &str, seq: u64, user: &str) -> Vec<u8> {
    let mut k = key(b'h', &[conv.as_bytes()]);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

pub fn held(conv: &str, seq: u64, user: &str, emoji: &str) -> Vec<u8> {
    let mut k = held_prefix(conv, seq, user);
    k.extend_from_slice(emoji.as_bytes());
    k
}

/// `n` conv `\0` who `\0` (who: a user id or `*`).
pub fn mention_prefix(conv: &str, who: &str) -> Vec<u8> {
    let mut k = key(b'n', &[conv.as_bytes(), who.as_bytes()]);
    k.push(0);
    k
}

pub fn mention(conv: &str, who: &str, seq: u64) -> Vec<u8> {
    let mut k = mention_prefix(conv, who);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn block_prefix(conv: &str) -> Vec<u8> {
    let mut k = key(b'k', &[conv.as_bytes()]);
    k.push(0);
    k
}

pub fn block(conv: &str, user: &str) -> Vec<u8> {
    let mut k = block_prefix(conv);
    k.extend_from_slice(user.as_bytes());
    k
}

pub fn user_block_prefix(user: &str) -> Vec<u8> {
    let mut k = key(b'b', &[user.as_bytes()]);
    k.push(0);
    k
}

pub fn user_block(user: &str, other: &str) -> Vec<u8> {
    let mut k = user_block_prefix(user);
    k.extend_from_slice(other.as_bytes());
    k
}

pub fn user_settings_prefix(user: &str) -> Vec<u8> {
    let mut k = key(b's', &[user.as_bytes()]);
    k.push(0);
    k
}

pub fn user_settings(user: &str, conv: &str) -> Vec<u8> {
    let mut k = user_settings_prefix(user);
    k.extend_from_slice(conv.as_bytes());
    k
}

pub fn user_conv_prefix(user: &str) -> Vec<u8> {
    let mut k = key(USER_CONV, &[user.as_bytes()]);
    k.push(0);
    k
}

pub fn user_conv(user: &str, conv: &str) -> Vec<u8> {
    let mut k = user_conv_prefix(user);
    k.extend_from_slice(conv.as_bytes());
    k
}

pub fn user_friend_prefix(user: &str) -> Vec<u8> {
    let mut k = key(USER_FRIEND, &[user.as_bytes()]);
    k.push(0);
    k
}

pub fn user_friend(user: &str, other: &str) -> Vec<u8> {
    let mut k = user_friend_prefix(user);
    k.extend_from_slice(other.as_bytes());
    k
}

/// A webhook event waiting for delivery.
pub fn outbox(id: u64) -> Vec<u8> {
    let mut k = vec![OUTBOX];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The user's access record (logout time, ban).
pub fn user_access(user: &str) -> Vec<u8> {
    key(b'a', &[user.as_bytes()])
}

pub fn media(id: &str) -> Vec<u8> {
    media_key(b'm', &[id.as_bytes()])
}

pub fn media_by_hash(sha256: &str) -> Vec<u8> {
    media_key(b'h', &[sha256.as_bytes()])
}

pub fn upload(id: &str) -> Vec<u8> {
    media_key(b'u', &[id.as_bytes()])
}

pub fn upload_prefix() -> Vec<u8> {
    vec![b'u']
}

pub fn pending_upload(owner: &str, sha256: &str, size: u64) -> Vec<u8> {
    media_key(
        b'p',
        &[owner.as_bytes(), sha256.as_bytes(), &size.to_be_bytes()],
    )
}

/// A user who uploaded this content, or proved they have it (their instant uploads need no proof).
pub fn media_holder(sha256: &str, user: &str) -> Vec<u8> {
    media_key(b'o', &[sha256.as_bytes(), user.as_bytes()])
}

/// The range of keys whose owner is in `slot`: `start..end`.
pub fn slot_range(slot: u16) -> (Vec<u8>, Vec<u8>) {
    let start = [&[OWNED][..], &slot.to_be_bytes()[..]].concat();
    let end = match slot.checked_add(1) {
        Some(next) => [&[OWNED][..], &next.to_be_bytes()[..]].concat(),
        None => vec![OWNED + 1],
    };
    (start, end)
}

/// The slot of an owned key (`None` for `A` and `o`, and for a key of the first layout).
pub fn slot_of_key(key: &[u8]) -> Option<u16> {
    match key {
        [OWNED, hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// A key of the first layout (no head), if `key` is one: the same key with its head. In the first
/// layout the owner follows the tag, up to the first `0x00` or the end.
pub fn with_head(key: &[u8]) -> Option<Vec<u8>> {
    let (&tag, rest) = key.split_first()?;
    if tag == OWNED || tag == b'A' || tag == OUTBOX {
        return None;
    }
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let mut k = Vec::with_capacity(HEAD + key.len());
    k.push(OWNED);
    k.extend_from_slice(&slot_of(&rest[..end]).to_be_bytes());
    k.extend_from_slice(key);
    Some(k)
}

/// Two u64s, big-endian (seq and ts of a dedupe entry).
pub fn two_u64(a: u64, b: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&a.to_be_bytes());
    v[8..].copy_from_slice(&b.to_be_bytes());
    v
}

/// The two u64s of [`two_u64`].
pub fn parse_two_u64(bytes: &[u8]) -> Option<(u64, u64)> {
    Some((parse_u64(bytes, 0)?, parse_u64(bytes, 8)?))
}

pub fn parse_u64(bytes: &[u8], at: usize) -> Option<u64> {
    let b: [u8; 8] = bytes.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_seq() {
        let mut keys: Vec<Vec<u8>> = [300u64, 2, 1, 256, 70_000]
            .iter()
            .map(|s| msg("dm:a:b", *s))
            .collect();
        keys.sort();
        let seqs: Vec<u64> = keys.iter().filter_map(|k| seq_of_msg_key(k)).collect();
        assert_eq!(seqs, vec![1, 2, 256, 300, 70_000]);
    }

    #[test]
    fn prefixes_do_not_overlap_between_conversations() {
        // "dm:a:b" must not be a prefix match for "dm:a:bc"
        assert!(!msg("dm:a:bc", 1).starts_with(&msg_prefix("dm:a:b")));
        assert!(!user_conv("ab", "g:x").starts_with(&user_conv_prefix("a")));
    }

    /// `key` with `owner`'s head.
    fn headed(owner: &str, key: &[u8]) -> Vec<u8> {
        let mut k = vec![OWNED];
        k.extend_from_slice(&slot_of(owner.as_bytes()).to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    #[test]
    fn layout_is_pinned() {
        assert_eq!(slot_of(b"g:x"), 0xbf04, "FNV-1a of the owner, modulo 2^16");
        assert_eq!(msg("g:x", 1), headed("g:x", b"mg:x\0\0\0\0\0\0\0\0\x01"));
        assert_eq!(cid("g:x", "al", "c1"), headed("g:x", b"cg:x\0al\0c1"));
        assert_eq!(read("g:x", "al"), headed("g:x", b"rg:x\0al"));
        assert_eq!(parse_u64(&two_u64(7, 9), 8), Some(9));
        assert_eq!(
            reaction_count("g:x", 2, "+1"),
            headed("g:x", b"eg:x\0\0\0\0\0\0\0\0\x02+1")
        );
        assert_eq!(
            parse_reaction_count("g:x", &reaction_count("g:x", 2, "+1")),
            Some((2, "+1".to_string()))
        );
        assert_eq!(
            reactor("g:x", 1, "+1", "al"),
            headed("g:x", b"Eg:x\0\0\0\0\0\0\0\0\x01+1\0al")
        );
        assert_eq!(
            mention("g:x", "*", 1),
            headed("g:x", b"ng:x\0*\0\0\0\0\0\0\0\0\x01")
        );
        assert_eq!(user_settings("al", "g:x"), headed("al", b"sal\0g:x"));
        assert_eq!(user_access("al"), headed("al", b"aal"));
        assert_eq!(media("x1"), b"mx1".to_vec(), "media keys have no head");
        assert_eq!(applied(7), b"A\0\0\0\x07".to_vec());
        assert_eq!(outbox(1), b"o\0\0\0\0\0\0\0\x01".to_vec());
    }

    #[test]
    fn keys_of_the_first_layout_get_their_head() {
        assert_eq!(with_head(b"mg:x\0\0\0\0\0\0\0\0\x01"), Some(msg("g:x", 1)));
        assert_eq!(with_head(b"sal\0g:x"), Some(user_settings("al", "g:x")));
        assert_eq!(with_head(b"aal"), Some(user_access("al")));
        assert_eq!(with_head(&msg("g:x", 1)), None, "already headed");
        assert_eq!(with_head(&applied(7)), None);
        assert_eq!(with_head(&outbox(1)), None);
    }

    #[test]
    fn a_slot_range_holds_exactly_its_owners_keys() {
        let slot = slot_of(b"g:x");
        let (start, end) = slot_range(slot);
        for k in [
            msg("g:x", 1),
            msg("g:x", u64::MAX),
            group("g:x"),
            member("g:x", "zz"),
        ] {
            assert!(start <= k && k < end);
            assert_eq!(slot_of_key(&k), Some(slot));
        }
        let (_, last_end) = slot_range(u16::MAX);
        assert!(
            applied(1) > last_end && outbox(1) > last_end,
            "unowned keys sort after every slot"
        );
        assert_eq!(slot_of_key(&applied(1)), None);
    }

    #[test]
    fn reaction_keys_of_one_emoji_exclude_longer_ones() {
        // "+1" must not match "+1x" (an emoji never holds 0x00, which ends it)
        assert!(!reactor("g:x", 1, "+1x", "al").starts_with(&reactor_prefix("g:x", 1, "+1")));
        assert!(!held("g:x", 1, "alx", "+1").starts_with(&held_prefix("g:x", 1, "al")));
    }
}
