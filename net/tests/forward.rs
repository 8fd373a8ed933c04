//! The forwarding link end to end on one glommio reactor: a `Forwarder` and the listener it
//! reaches (`serve_forwarded`), on mutual TLS and on sealed plaintext. A burst far larger than
//! the sockets' buffers is sent at once and every vote must come back answered by the owner:
//! a write that leaves bytes behind (TLS records the socket could not take, never flushed)
//! would strand the last answers until the link's stall bound answered them `503`.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use votes_core::forward::ForwardedVote;
use votes_core::{ElectionId, OptionId, VoteIntent, VoteOutcome, VoterId};
use votes_net::LocalBoxFuture;
use votes_net::forward::{
    ForwardHandler, ForwardLimits, ForwardStats, Forwarder, LinkSecurity, serve_forwarded,
};

/// Votes in the burst: with the election and option ids below each is ~120 bytes on the wire
/// (more under TLS), several MB each way, well past a loopback socket's buffers.
const BURST: usize = 40_000;

/// Accepts every vote at once, at the partition it names (the owner's verdict without a
/// shard: what is under test is the link).
struct Owner;

impl ForwardHandler for Owner {
    fn vote(&self, vote: ForwardedVote) -> LocalBoxFuture<'static, VoteOutcome> {
        Box::pin(async move {
            VoteOutcome::Accepted {
                partition: vote.partition,
                offset: vote.vote.voter.0,
            }
        })
    }

    fn admits(&self, ip: IpAddr) -> bool {
        ip.is_loopback()
    }
}

fn vote(voter: u64) -> ForwardedVote {
    ForwardedVote {
        id: 0,
        partition: (voter % 8) as u32,
        vote: VoteIntent {
            election: ElectionId::new("a-burst-of-forwarded-votes-2026").unwrap(),
            voter: VoterId(voter),
            option: OptionId::new("an-option-with-a-longer-id").unwrap(),
            received_at_ms: 1_790_000_000_000,
            nonce: [7; 16],
        },
    }
}

/// Sends the burst over a link secured by `security` and counts the answers by kind.
fn burst_through(security: LinkSecurity) -> (usize, usize) {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            let limits = ForwardLimits {
                max_in_flight: BURST * 2,
                answer_stall: Duration::from_secs(20),
                ..ForwardLimits::default()
            };
            let shutdown = votes_net::LocalSignal::new();
            glommio::spawn_local(serve_forwarded(
                listener,
                "owner".into(),
                security.clone(),
                Rc::new(Owner),
                limits.clone(),
                Rc::new(ForwardStats::default()),
                shutdown.clone(),
            ))
            .detach();
            let edge = Forwarder::new("edge".into(), security, limits);
            let answers: Vec<_> = (0..BURST as u64)
                .map(|voter| edge.forward("owner", addr, vote(voter)).unwrap())
                .collect();
            let (mut accepted, mut other) = (0, 0);
            for (voter, answer) in answers.into_iter().enumerate() {
                match answer.await {
                    Ok(VoteOutcome::Accepted { partition, offset }) => {
                        assert_eq!(offset, voter as u64, "answers match their votes");
                        assert_eq!(partition, (voter % 8) as u32);
                        accepted += 1;
                    }
                    _ => other += 1,
                }
            }
            shutdown.fire();
            (accepted, other)
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn a_burst_over_mutual_tls_is_answered_in_full() {
    let pki = votes_net::dev_fleet_pki(&["127.0.0.1"]).unwrap();
    let dir = std::env::temp_dir().join(format!("votes-forward-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = &pki.nodes[0];
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(dir.join("node.pem"), cert).unwrap();
    std::fs::write(dir.join("node.key"), key).unwrap();
    let tls = votes_net::internal_tls(
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("ca.pem"),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(burst_through(LinkSecurity::Tls(tls)), (BURST, 0));
}

#[test]
fn a_burst_over_sealed_plaintext_is_answered_in_full() {
    let key = votes_core::forward::derive_key(b"a forwarding key for this test only");
    assert_eq!(burst_through(LinkSecurity::Keyed(key.into())), (BURST, 0));
}
