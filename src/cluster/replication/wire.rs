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

/// What [`encode`] gives for the one message `m` (a snapshot), as parts whose joining is the payload,
/// with the snapshot's data in the middle as it is (shared, not copied). A partition's snapshot is tens
/// of MiB in a move, and its copy into one fresh buffer per snapshot cost the sender about 6 ms of CPU
/// per MiB on the virtual machines measured (bench/README.md, "Stop 41").
///
/// The message's other fields come first and the snapshot field (9) last: protobuf reads fields in any
/// order, so the receiver decodes the same message (unit-tested).
pub(super) fn encode_snapshot(p: PartitionId, m: &Message) -> Option<Vec<bytes::Bytes>> {
    let snapshot = m.get_snapshot();
    let data = snapshot.data.clone();
    let encoded = (|| -> crate::raft::log::LogResult<(Vec<u8>, Vec<u8>)> {
        let mut others = m.clone();
        others.clear_snapshot();
        let mut head = others.write_to_bytes()?;
        let (data_head, metadata) = crate::raft::log::snapshot_parts(snapshot)?;
        if m.has_snapshot() {
            let mut os = protobuf::CodedOutputStream::vec(&mut head);
            os.write_tag(9, protobuf::wire_format::WireTypeLengthDelimited)?;
            os.write_raw_varint64((data_head.len() + data.len() + metadata.len()) as u64)?;
            os.flush()?;
        }
        head.extend_from_slice(&data_head);
        Ok((head, metadata))
    })();
    let (head, metadata) = encoded
        .inspect_err(
            |e| tracing::error!(partition = p, error = %e, "cannot encode a raft snapshot"),
        )
        .ok()?;
    let Ok(len) = u32::try_from(head.len() + data.len() + metadata.len()) else {
        tracing::error!(
            partition = p,
            "cannot send a raft snapshot of 4 GiB or more"
        );
        return None;
    };
    let mut prefix = Vec::with_capacity(head.len() + 8);
    prefix.extend_from_slice(&p.to_be_bytes());
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix.extend_from_slice(&head);
    Some(vec![prefix.into(), data, metadata.into()])
}

/// `parts` (joined: a payload) cut into pieces of `size` bytes (the last one shorter): slices of the parts
/// where a piece lies within one, joined copies where it spans two.
pub(super) fn pieces(parts: &[bytes::Bytes], size: usize) -> Vec<bytes::Bytes> {
    fn join(mut slices: Vec<bytes::Bytes>) -> bytes::Bytes {
        match slices.len() {
            1 => slices.pop().unwrap_or_default(),
            _ => slices.concat().into(),
        }
    }
    let size = size.max(1);
    let mut out = Vec::new();
    let mut piece = Vec::new();
    let mut held = 0;
    for part in parts {
        let mut at = 0;
        while at < part.len() {
            let take = (size - held).min(part.len() - at);
            piece.push(part.slice(at..at + take));
            held += take;
            at += take;
            if held == size {
                out.push(join(std::mem::take(&mut piece)));
                held = 0;
            }
        }
    }
    if held > 0 {
        out.push(join(piece));
    }
    out
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
    fn a_snapshot_in_parts_decodes_as_its_whole_encoding_did_and_its_data_is_not_copied() {
        let mut m = message(2, 3);
        m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        m.set_index(41);
        m.set_commit(40);
        m.set_context(b"ctx".to_vec().into());
        let snapshot = m.mut_snapshot();
        snapshot.set_data(vec![7u8; 2_500_000].into());
        snapshot.mut_metadata().set_index(40);
        snapshot.mut_metadata().set_term(3);
        snapshot
            .mut_metadata()
            .mut_conf_state()
            .set_voters(vec![1, 2, 3]);
        let parts = encode_snapshot(9, &m).expect("encodes");
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts[1].as_ptr(),
            m.get_snapshot().get_data().as_ptr(),
            "the data itself"
        );
        let back = decode_bytes(&parts.concat()).expect("decodes");
        assert_eq!(back, vec![(9, m.clone())]);
        assert_eq!(
            back,
            decode_bytes(&encode(&[(9, m.clone())])[0]).expect("decodes")
        );
        // a snapshot with no data (an empty partition) and a message without one
        m.mut_snapshot().set_data(bytes::Bytes::new());
        let back =
            decode_bytes(&encode_snapshot(9, &m).expect("encodes").concat()).expect("decodes");
        assert_eq!(back, vec![(9, m.clone())]);
        m.clear_snapshot();
        let back =
            decode_bytes(&encode_snapshot(9, &m).expect("encodes").concat()).expect("decodes");
        assert_eq!(back, vec![(9, m)]);
    }

    #[test]
    fn pieces_are_slices_of_the_parts_except_across_them() {
        let parts: Vec<bytes::Bytes> = [(1u8, 10usize), (2, 2_500), (3, 7)]
            .iter()
            .map(|(byte, n)| vec![*byte; *n].into())
            .collect();
        let whole = parts.concat();
        for size in [1, 7, 1_000, 2_517, 4_096] {
            let cut = pieces(&parts, size);
            assert_eq!(cut.concat(), whole, "size {size}");
            assert!(cut.iter().all(|p| !p.is_empty() && p.len() <= size));
            assert!(cut[..cut.len() - 1].iter().all(|p| p.len() == size));
        }
        // inside the second part: its own bytes
        let cut = pieces(&parts, 1_000);
        assert_eq!(cut[1].as_ptr(), parts[1][990..].as_ptr());
        assert!(pieces(&[], 1_000).is_empty());
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
