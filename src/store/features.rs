//! Reactions, the mention index, blocks and a user's conversation settings (the keys are in [`super::keys`]).
//! A reaction or a mention never rewrites its message: it is a counter and set entries beside it.

use std::collections::{BTreeMap, BTreeSet};

use super::{keys, scan, Store, StoreError, StoreResult};
use crate::ids::{ConvId, UserId};
use crate::net::protocol::Mention;
use crate::state::conv::Write;
use crate::state::settings::ConvSettings;
use crate::state::user::UserWrite;

impl Store {
    /// The emoji `user` holds on message `seq`.
    pub fn reactions_of(&self, conv: &ConvId, seq: u64, user: &UserId) -> StoreResult<Vec<String>> {
        scan(
            &self.conv_log,
            &keys::held_prefix(conv.as_str(), seq, user.as_str()),
            conv.as_str(),
            |emoji, _| Some(emoji.to_string()),
        )
    }

    /// How many users hold `emoji` on message `seq`.
    pub fn reaction_count(&self, conv: &ConvId, seq: u64, emoji: &str) -> StoreResult<u64> {
        let v = self
            .conv_log
            .get(keys::reaction_count(conv.as_str(), seq, emoji))?;
        Ok(v.and_then(|v| keys::parse_u64(&v, 0)).unwrap_or(0))
    }

    /// `user` holds (`on`) or no longer holds `emoji` on message `seq`, which `count` users now hold.
    pub fn set_reaction(
        &self,
        conv: &ConvId,
        seq: u64,
        user: &UserId,
        emoji: &str,
        on: bool,
        count: u64,
    ) -> StoreResult<()> {
        let write = Write::Reaction {
            seq,
            user: user.clone(),
            emoji: emoji.to_owned(),
            on,
            count,
        };
        self.write_conv(conv, &[write])
    }

    /// The reaction counts of messages `from..=to`, by seq (messages without reactions are absent): one
    /// range scan, whatever the number of messages.
    pub fn reaction_counts(
        &self,
        conv: &ConvId,
        from: u64,
        to: u64,
    ) -> StoreResult<BTreeMap<u64, BTreeMap<String, u64>>> {
        let mut out: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
        if from > to {
            return Ok(out);
        }
        let c = conv.as_str();
        let start = keys::reaction_count_prefix(c, from);
        let end = match to.checked_add(1) {
            Some(next) => keys::reaction_count_prefix(c, next),
            None => {
                let mut k = keys::reaction_count_prefix(c, to);
                k.push(0xff);
                k
            }
        };
        for entry in self.conv_log.range(start..end) {
            let (k, v) = entry?;
            let (seq, emoji) = keys::parse_reaction_count(c, &k)
                .ok_or_else(|| StoreError::Corrupt(conv.to_string()))?;
            let count = keys::parse_u64(&v, 0).unwrap_or(0);
            out.entry(seq).or_default().insert(emoji, count);
        }
        Ok(out)
    }

    /// The users holding `emoji` on message `seq`, sorted, at most `limit`.
    pub fn reactors(
        &self,
        conv: &ConvId,
        seq: u64,
        emoji: &str,
        limit: usize,
    ) -> StoreResult<Vec<UserId>> {
        let prefix = keys::reactor_prefix(conv.as_str(), seq, emoji);
        let mut out = Vec::new();
        for entry in self.conv_log.scan_prefix(&prefix).take(limit) {
            let (k, _) = entry?;
            let user = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|u| UserId::parse(u).ok())
                .ok_or_else(|| StoreError::Corrupt(conv.to_string()))?;
            out.push(user);
        }
        Ok(out)
    }

    /// Index entries of message `seq`'s mentions, added (`on`) or removed.
    pub fn set_mentions(
        &self,
        conv: &ConvId,
        seq: u64,
        mentions: &[Mention],
        on: bool,
    ) -> StoreResult<()> {
        let mentions = mentions.to_vec();
        self.write_conv(conv, &[Write::Mentions { seq, mentions, on }])
    }

    /// How many messages with `after < seq <= upto` mention `user` (by name or `*`).
    pub fn mention_count(
        &self,
        conv: &ConvId,
        user: &UserId,
        after: u64,
        upto: u64,
    ) -> StoreResult<u64> {
        if after >= upto {
            return Ok(0);
        }
        let mut seqs = BTreeSet::new();
        for who in [user.as_str(), "*"] {
            let start = keys::mention(conv.as_str(), who, after.saturating_add(1));
            let end = keys::mention(conv.as_str(), who, upto);
            for entry in self.conv_log.range(start..=end) {
                let (k, _) = entry?;
                if let Some(seq) = keys::seq_of_msg_key(&k) {
                    seqs.insert(seq);
                }
            }
        }
        Ok(seqs.len() as u64)
    }

    /// Who of a direct pair blocks the other.
    pub fn blocks(&self, conv: &ConvId) -> StoreResult<Vec<UserId>> {
        scan(
            &self.conv_log,
            &keys::block_prefix(conv.as_str()),
            conv.as_str(),
            |user, _| UserId::parse(user).ok(),
        )
    }

    pub fn set_block(&self, conv: &ConvId, user: &UserId, on: bool) -> StoreResult<()> {
        let user = user.clone();
        self.write_conv(conv, &[Write::Block { user, on }])
    }

    // ---- users ----

    /// The users `user` blocks.
    pub fn blocked(&self, user: &UserId) -> StoreResult<Vec<UserId>> {
        scan(
            &self.user_index,
            &keys::user_block_prefix(user.as_str()),
            user.as_str(),
            |other, _| UserId::parse(other).ok(),
        )
    }

    pub fn set_blocked(&self, user: &UserId, other: &UserId, on: bool) -> StoreResult<()> {
        let other = other.clone();
        self.write_user(user, &[UserWrite::Block { other, on }])
    }

    /// `user`'s settings of the conversations where they differ from the defaults.
    pub fn conv_settings(&self, user: &UserId) -> StoreResult<Vec<(ConvId, ConvSettings)>> {
        scan(
            &self.user_index,
            &keys::user_settings_prefix(user.as_str()),
            user.as_str(),
            |conv, v| {
                Some((
                    ConvId::parse(conv).ok()?,
                    serde_json::from_slice::<ConvSettings>(v).ok()?,
                ))
            },
        )
    }

    /// `None` removes them (the defaults).
    pub fn set_conv_settings(
        &self,
        user: &UserId,
        conv: &ConvId,
        settings: Option<&ConvSettings>,
    ) -> StoreResult<()> {
        let write = UserWrite::Settings {
            conv: conv.clone(),
            settings: settings.cloned(),
        };
        self.write_user(user, &[write])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreConfig;

    fn store(dir: &std::path::Path) -> Store {
        let hist = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t"))
            .expect("hist");
        Store::open(dir, &StoreConfig::default(), hist).expect("open")
    }

    fn user(s: &str) -> UserId {
        UserId::parse(s).expect("user")
    }

    #[test]
    fn reactions_count_list_and_page_by_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let conv = ConvId::parse("g:team").expect("conv");
        s.set_reaction(&conv, 2, &user("bob"), "+1", true, 1)
            .expect("r");
        s.set_reaction(&conv, 2, &user("al"), "+1", true, 2)
            .expect("r");
        s.set_reaction(&conv, 2, &user("al"), "+1x", true, 1)
            .expect("r");
        s.set_reaction(&conv, 3, &user("al"), "ok", true, 1)
            .expect("r");
        assert_eq!(s.reaction_count(&conv, 2, "+1").expect("n"), 2);
        assert_eq!(
            s.reactors(&conv, 2, "+1", 10).expect("reactors"),
            vec![user("al"), user("bob")]
        );
        assert_eq!(
            s.reactions_of(&conv, 2, &user("al")).expect("held").len(),
            2
        );
        let counts = s.reaction_counts(&conv, 1, 2).expect("counts");
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[&2]["+1x"], 1);
        s.set_reaction(&conv, 2, &user("al"), "+1x", false, 0)
            .expect("r");
        assert!(!s.reaction_counts(&conv, 2, 2).expect("c")[&2].contains_key("+1x"));
        assert_eq!(s.reaction_counts(&conv, 3, u64::MAX).expect("c").len(), 1);
    }

    #[test]
    fn mention_counts_take_names_and_everyone_once_per_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let conv = ConvId::parse("g:team").expect("conv");
        let bob = Mention::User(user("bob"));
        s.set_mentions(&conv, 2, &[bob.clone(), Mention::All], true)
            .expect("m");
        s.set_mentions(&conv, 5, &[Mention::All], true).expect("m");
        s.set_mentions(&conv, 7, std::slice::from_ref(&bob), true)
            .expect("m");
        assert_eq!(s.mention_count(&conv, &user("bob"), 0, 10).expect("n"), 3);
        assert_eq!(s.mention_count(&conv, &user("bob"), 2, 6).expect("n"), 1);
        assert_eq!(s.mention_count(&conv, &user("carol"), 0, 10).expect("n"), 2);
        s.set_mentions(&conv, 7, &[bob], false).expect("m");
        assert_eq!(s.mention_count(&conv, &user("bob"), 5, 10).expect("n"), 0);
    }
}
