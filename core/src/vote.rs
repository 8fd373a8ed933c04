//! A vote between the edge and the log, and what became of it.
//!
//! The edge makes a [`VoteIntent`] once its checks pass (token, election open, option known,
//! proof of work); the mesh carries it to the core that owns the voter's partition, the
//! forwarding link to the node that does, and the shard holds it until its transaction ends.
//! Every hop answers with a [`VoteOutcome`]. The log stores it as a
//! [`VoteRecord`](crate::VoteRecord) (the intent plus the node and core that wrote it), and the
//! receipt is [`Leaf::of`](crate::Leaf::of) the intent at its log position, whichever of them
//! computes it: the edge for the `202`, the persister for DynamoDB, the audit for the tree.

use crate::api_error::ErrorCode;
use crate::election::{Election, ElectionState};
use crate::ids::{ElectionId, OptionId, VoterId};
use crate::record::{RecordRef, VoteRecord};

/// What a voter asked for, stamped where it arrived.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteIntent {
    pub election: ElectionId,
    pub voter: VoterId,
    pub option: OptionId,
    /// Unix ms at the ingest node.
    pub received_at_ms: u64,
    /// Random: makes the receipt unguessable to whoever knows the rest.
    pub nonce: [u8; 16],
}

impl VoteIntent {
    /// The record the owner of the voter's partition writes for it.
    pub fn record<'a>(&'a self, node: &'a str, core: u16) -> RecordRef<'a> {
        RecordRef {
            election: &self.election,
            voter: self.voter,
            option: &self.option,
            received_at_ms: self.received_at_ms,
            node,
            core,
            nonce: &self.nonce,
        }
    }
}

impl From<VoteRecord> for VoteIntent {
    /// The intent a logged record carries (who wrote it is not part of the vote).
    fn from(r: VoteRecord) -> Self {
        Self {
            election: r.election,
            voter: r.voter,
            option: r.option,
            received_at_ms: r.received_at_ms,
            nonce: r.nonce,
        }
    }
}

/// What became of a vote: committed at a position of the log, or refused with a contract code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteOutcome {
    /// In the committed log at `offset` of `partition`: the `202`.
    Accepted { partition: u32, offset: u64 },
    /// Not recorded; the code says why (`already_voted`, `election_not_open`, `unavailable`, …).
    Rejected(ErrorCode),
}

/// The owner's judgement of a forwarded vote's election on its own view (docs/design.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerVerdict {
    /// Open and the option its own: the vote goes to its shard (which checks again, under
    /// its own core's view, that the election has not closed meanwhile).
    Take,
    Refuse(ErrorCode),
    /// The view does not know the election, or knows it only as a draft: either the edge's
    /// view is ahead (the election opened through another node a moment ago) or the peer
    /// names an election that is not open. Only the view catching up tells which.
    NotYet,
}

impl OwnerVerdict {
    /// `election` as the owner's view has it, for a vote for `option`.
    pub fn of(election: Option<&Election>, option: &OptionId) -> Self {
        match election {
            None => Self::NotYet,
            Some(e) => match e.state {
                ElectionState::Draft => Self::NotYet,
                ElectionState::Open if e.has_option(option) => Self::Take,
                ElectionState::Open => Self::Refuse(ErrorCode::InvalidOption),
                ElectionState::Closed | ElectionState::Final => {
                    Self::Refuse(ErrorCode::ElectionNotOpen)
                }
            },
        }
    }

    /// The verdict once the owner stops waiting for its view: what it still does not know
    /// open is answered as the edge answers it, `404 not_found` for an unknown election and
    /// for a draft alike (a draft is not shown to voters).
    pub fn at_deadline(self) -> Self {
        match self {
            Self::NotYet => Self::Refuse(ErrorCode::NotFound),
            decided => decided,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Leaf;

    fn intent() -> VoteIntent {
        VoteIntent {
            election: ElectionId::new("tv-final").unwrap(),
            voter: VoterId(42),
            option: OptionId::new("blue").unwrap(),
            received_at_ms: 1_800_000_000_123,
            nonce: [7; 16],
        }
    }

    /// The receipt in the `202` is computed by the edge from the intent; the persister and the
    /// audit compute it again from the record they read back from the log. They must agree,
    /// or a voter's receipt would not be in the official tree.
    #[test]
    fn the_receipt_of_the_202_is_the_leaf_the_audit_rebuilds_from_the_log() {
        const AUDIT_KEY: &[u8] = b"audit key of the test";
        let vote = intent();
        let (partition, offset) = (3, 1_234_567);
        let at_the_edge = Leaf::of(AUDIT_KEY, vote.clone(), partition, offset);
        let mut logged = Vec::new();
        vote.record("node-a", 1).encode_into(&mut logged);
        let read_back = VoteRecord::decode(&logged).unwrap();
        assert_eq!((read_back.node.as_str(), read_back.core), ("node-a", 1));
        let in_the_audit = Leaf::of(AUDIT_KEY, read_back.into(), partition, offset);
        assert_eq!(at_the_edge, in_the_audit);
        assert_eq!(at_the_edge.receipt_hex(), in_the_audit.receipt_hex());
        // Each input of the leaf changes the receipt: none is dropped on the way.
        let receipt = at_the_edge.receipt_hex();
        let other_key = Leaf::of(b"another key", vote.clone(), partition, offset);
        let other_place = Leaf::of(AUDIT_KEY, vote.clone(), partition, offset + 1);
        let other_nonce = Leaf::of(
            AUDIT_KEY,
            VoteIntent {
                nonce: [8; 16],
                ..vote.clone()
            },
            partition,
            offset,
        );
        for other in [other_key, other_place, other_nonce] {
            assert_ne!(other.receipt_hex(), receipt);
        }
        // What is not in the leaf does not change it: the time and the writer.
        let later = VoteIntent {
            received_at_ms: vote.received_at_ms + 1,
            ..vote
        };
        assert_eq!(
            Leaf::of(AUDIT_KEY, later, partition, offset).receipt_hex(),
            receipt
        );
    }

    fn election(state: &str) -> Election {
        Election::from_json(
            format!(
                r#"{{"id":"tv-final","title":"t","state":"{state}","version":1,
                "options":[{{"id":"blue","label":"Blue"}},{{"id":"red","label":"Red"}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    /// An election the owner does not know open waits for its view, and is refused as the
    /// edge refuses it if the view never catches up; what the view knows open or past open is
    /// decided at once, and the deadline does not change it.
    #[test]
    fn the_owner_waits_only_for_what_its_view_may_not_know_yet() {
        let blue = OptionId::new("blue").unwrap();
        let green = OptionId::new("green").unwrap();
        let cases = [
            (None, &blue, OwnerVerdict::NotYet, ErrorCode::NotFound),
            (
                Some(election("draft")),
                &blue,
                OwnerVerdict::NotYet,
                ErrorCode::NotFound,
            ),
            (
                Some(election("open")),
                &green,
                OwnerVerdict::Refuse(ErrorCode::InvalidOption),
                ErrorCode::InvalidOption,
            ),
            (
                Some(election("closed")),
                &blue,
                OwnerVerdict::Refuse(ErrorCode::ElectionNotOpen),
                ErrorCode::ElectionNotOpen,
            ),
            (
                Some(election("final")),
                &blue,
                OwnerVerdict::Refuse(ErrorCode::ElectionNotOpen),
                ErrorCode::ElectionNotOpen,
            ),
        ];
        for (e, option, now, later) in cases {
            let verdict = OwnerVerdict::of(e.as_ref(), option);
            assert_eq!(verdict, now, "{e:?} {option:?}");
            assert_eq!(verdict.at_deadline(), OwnerVerdict::Refuse(later), "{e:?}");
        }
        let open = election("open");
        assert_eq!(OwnerVerdict::of(Some(&open), &blue), OwnerVerdict::Take);
        assert_eq!(
            OwnerVerdict::of(Some(&open), &blue).at_deadline(),
            OwnerVerdict::Take
        );
    }
}
