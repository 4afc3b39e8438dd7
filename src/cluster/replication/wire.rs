//! The `Raft` peer frames' payload: a batch of raft-rs messages, each with its partition (bytes in a
//! `RaftBytes` frame, base64 in a `Raft` frame to an older node).

use base64::Engine as _;
use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::cluster::placement::PartitionId;

/// Largest `Raft` peer frame's batch: a batch bigger than this is split (one group's append is at most
/// 1 MiB, raft-rs's `max_size_per_msg`).
const MAX_FRAME_BATCH: usize = 4 << 20;

/// A batch as frame payloads: per message its partition and length (4 bytes each, big-endian) and its
/// protobuf bytes, split so that no payload exceeds [`MAX_FRAME_BATCH`] (unless one message does).
pub(super) fn encode(messages: &[(PartitionId, Message)]) -> Vec<Vec<u8>> {
    let mut chunks = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for (p, m) in messages {
        let bytes = match m.write_to_bytes() {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a raft message");
                continue;
            }
        };
        let Ok(len) = u32::try_from(bytes.len()) else {
            continue;
        };
        if !buf.is_empty() && buf.len() + bytes.len() + 8 > MAX_FRAME_BATCH {
            chunks.push(std::mem::take(&mut buf));
        }
        buf.extend_from_slice(&p.to_be_bytes());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&bytes);
    }
    if !buf.is_empty() {
        chunks.push(buf);
    }
    chunks
}

/// A payload for a `Raft` or `RaftPart` frame (to a node that reads no binary frames).
pub(super) fn base64(payload: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(payload)
}

/// A batch as received: from a `Raft` frame (base64), a `RaftBytes` one, or `RaftPartBytes` pieces.
pub(super) enum Received {
    Base64(String),
    /// The frame's payload, shared by the messages decoded from it: a snapshot's data is a slice of it,
    /// not a copy (it is tens of MiB per move on the node that joins).
    Bytes(bytes::Bytes),
    /// A batch's pieces in order, joined by [`Received::decode`] (on the receiving thread, not the
    /// link's), at their exact size.
    Pieces(Vec<bytes::Bytes>),
}

impl Received {
    pub(super) fn decode(&self) -> Result<Vec<(PartitionId, Message)>, DecodeError> {
        match self {
            Received::Base64(text) => decode(text),
            Received::Bytes(bytes) => decode_shared(bytes),
            Received::Pieces(pieces) => match pieces.as_slice() {
                [one] => decode_shared(one),
                _ => decode_shared(&pieces.concat().into()),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("not a raft message: {0}")]
    Protobuf(#[from] protobuf::ProtobufError),
}

pub(super) fn decode(batch: &str) -> Result<Vec<(PartitionId, Message)>, DecodeError> {
    decode_shared(
        &base64::engine::general_purpose::STANDARD
            .decode(batch)?
            .into(),
    )
}

#[cfg(test)]
pub(super) fn decode_bytes(bytes: &[u8]) -> Result<Vec<(PartitionId, Message)>, DecodeError> {
    decode_shared(&bytes::Bytes::copy_from_slice(bytes))
}

/// A message at least this large keeps a slice of its frame for its data instead of a copy: a snapshot
/// (tens of MiB per move on the node that joins) or a large append. Smaller ones are copied, so that an
/// entry kept in a group's log does not hold a whole frame of other groups' messages.
const SHARE_FROM: usize = 1 << 20;

/// Decodes a batch; large messages keep slices of `bytes` (see [`SHARE_FROM`]).
fn decode_shared(bytes: &bytes::Bytes) -> Result<Vec<(PartitionId, Message)>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let header = bytes
            .get(at..at.saturating_add(8))
            .ok_or(DecodeError::Truncated(at))?;
        let p = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let start = at.saturating_add(8);
        let end = start.checked_add(len).ok_or(DecodeError::Truncated(at))?;
        if end > bytes.len() {
            return Err(DecodeError::Truncated(at));
        }
        let message = if len >= SHARE_FROM {
            Message::parse_from_carllerche_bytes(&bytes.slice(start..end))?
        } else {
            Message::parse_from_bytes(&bytes[start..end])?
        };
        out.push((p, message));
        at = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(to: u64, term: u64) -> Message {
        let mut m = Message {
            to,
            from: 7,
            term,
            ..Default::default()
        };
        m.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
        m
    }

    #[test]
    fn batches_round_trip_and_split_at_the_frame_limit() {
        let small: Vec<(PartitionId, Message)> =
            (0..300).map(|p| (p, message(2, u64::from(p)))).collect();
        let chunks = encode(&small);
        assert_eq!(chunks.len(), 1);
        assert_eq!(decode_bytes(&chunks[0]).expect("decodes"), small);
        assert_eq!(decode(&base64(&chunks[0])).expect("decodes"), small);

        let mut big = message(2, 1);
        big.set_entries(
            vec![raft::eraftpb::Entry {
                data: vec![7u8; 1 << 20].into(),
                ..Default::default()
            }]
            .into(),
        );
        let many: Vec<(PartitionId, Message)> = (0..9).map(|p| (p, big.clone())).collect();
        let chunks = encode(&many);
        assert!(
            chunks.len() >= 3,
            "9 MiB in frames of at most 4 MiB: {}",
            chunks.len()
        );
        let back: Vec<(PartitionId, Message)> = chunks
            .iter()
            .flat_map(|c| decode_bytes(c).expect("decodes"))
            .collect();
        assert_eq!(back, many);
    }

    #[test]
    fn a_batch_in_pieces_decodes_as_the_whole_did() {
        let mut snapshot = message(2, 3);
        snapshot.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        snapshot.mut_snapshot().set_data(
            (0..3_000_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into(),
        );
        let batch = vec![(5, snapshot)];
        let chunks = encode(&batch);
        assert_eq!(chunks.len(), 1);
        let whole = bytes::Bytes::from(chunks.into_iter().next().expect("one"));
        // cut as the sender cuts (1 MiB), and at odd places
        for size in [1 << 20, 999_983, whole.len()] {
            let pieces: Vec<bytes::Bytes> = (0..whole.len())
                .step_by(size)
                .map(|at| whole.slice(at..(at + size).min(whole.len())))
                .collect();
            let back = Received::Pieces(pieces).decode().expect("decodes");
            assert_eq!(back, batch, "pieces of {size}");
        }
        assert!(
            Received::Pieces(vec![whole.slice(..100), whole.slice(200..)])
                .decode()
                .is_err()
        );
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert!(decode("!!").is_err());
        let truncated =
            base64::engine::general_purpose::STANDARD.encode([0u8, 0, 0, 1, 0, 0, 1, 0, 9]);
        assert!(decode(&truncated).is_err());
        let huge_len =
            base64::engine::general_purpose::STANDARD.encode([0u8, 0, 0, 1, 255, 255, 255, 255]);
        assert!(decode(&huge_len).is_err());
        assert!(decode_bytes(&[0, 0, 0, 1, 255, 255, 255, 255]).is_err());
        assert!(decode_bytes(&[0, 0, 0, 1, 0, 0, 0, 9, 1]).is_err());
    }
}
