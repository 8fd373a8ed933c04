//! The fleet as this node sees it (docs/design.md §3.1, §4.1 `--internal`).
//!
//! * Each core is a member of the serve group ([`votes_tally::membership::Member`], on a
//!   thread of its own); the core's [`super::shards::ShardHost`] drains the member's events (the member rings
//!   the core's doorbell) into its commit engine.
//! * One thread per node reads the group's description every [`WATCH_EVERY`] and publishes
//!   the map partition → node/core/internal address on a [`FleetBoard`]; every core keeps a
//!   [`FleetView`] of it (one atomic load per vote, the map is re-read only when it changed)
//!   and routes each vote with [`route`].

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use votes_tally::membership::{FleetMap, GroupWatch};

/// How often the node reads the group's description.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Shortest time between two new clients of the fleet watch after failed describes.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// The newest stable fleet map, published by the watch thread, read by every core.
#[derive(Debug, Default)]
pub struct FleetBoard {
    /// 0 until the first stable description.
    generation: AtomicU64,
    map: Mutex<Arc<FleetMap>>,
    /// When the group was last described, in ms on the process's monotonic clock, plus one
    /// (0: never): a node cut off from Kafka must not keep vouching for its last map. Not the
    /// wall clock: a clock stepped back would keep a dead watch's map fresh for as long as the
    /// step, and a step forward would make a live one stale.
    described_at_ms: AtomicU64,
}

/// Milliseconds on a monotonic clock that starts with the process.
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl FleetBoard {
    fn publish(&self, map: FleetMap) {
        let mut current = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if **current == map && self.generation.load(Ordering::Acquire) > 0 {
            return;
        }
        *current = Arc::new(map);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn touch(&self) {
        self.described_at_ms
            .store(monotonic_ms().saturating_add(1), Ordering::Release);
    }

    /// Time since the group was last described (`None`: never).
    pub fn age(&self) -> Option<Duration> {
        match self.described_at_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some(Duration::from_millis(
                monotonic_ms().saturating_add(1).saturating_sub(at),
            )),
        }
    }

    pub fn current(&self) -> Arc<FleetMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One core's copy of the board's map: a deep copy, so that using it per vote touches no
/// reference count shared with the other cores.
pub struct FleetView {
    board: Arc<FleetBoard>,
    cached: RefCell<(u64, Rc<FleetMap>)>,
}

impl FleetView {
    pub fn new(board: Arc<FleetBoard>) -> Self {
        Self {
            cached: RefCell::new((0, Rc::new(FleetMap::default()))),
            board,
        }
    }

    /// The newest map and its generation (0: none yet).
    pub fn map(&self) -> (u64, Rc<FleetMap>) {
        let generation = self.board.generation();
        let mut cached = self.cached.borrow_mut();
        if cached.0 != generation {
            *cached = (generation, Rc::new((*self.board.current()).clone()));
        }
        cached.clone()
    }
}

/// Where a vote for a partition goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A core of this node owns it.
    Local { core: usize },
    /// Another node owns it; its name and internal listener.
    Remote { node: String, internal: SocketAddr },
    /// Nobody does right now (no stable map yet, or a rebalance is moving it).
    NoOwner,
}

pub fn route(map: &FleetMap, node: &str, cores: usize, partition: u32) -> Route {
    match map.owner(partition) {
        None => Route::NoOwner,
        Some(o) if o.node == node => {
            let core = usize::from(o.core);
            // A core index from a previous run of this node with more cores.
            if core < cores {
                Route::Local { core }
            } else {
                Route::NoOwner
            }
        }
        Some(o) => Route::Remote {
            node: o.node.clone(),
            internal: o.internal,
        },
    }
}

/// Reads the group's description until `stop`, publishing each stable map.
pub fn start_watch(
    mut watch: GroupWatch,
    board: Arc<FleetBoard>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fleet-watch".into())
        .spawn(move || {
            let mut renewed = Instant::now();
            while !stop.load(Ordering::Acquire) {
                match watch.describe(timeout) {
                    Ok(Some(map)) => {
                        board.publish(map);
                        board.touch();
                    }
                    Ok(None) => board.touch(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot describe the serve group");
                        // A client stuck on a dead broker fails until it is replaced
                        // (GroupWatch::renew); at most once a second, a new one.
                        if renewed.elapsed() >= RENEW_EVERY {
                            renewed = Instant::now();
                            if let Err(e) = watch.renew() {
                                tracing::warn!(error = %e, "cannot renew the fleet watch's client");
                            }
                        }
                    }
                }
                std::thread::sleep(WATCH_EVERY);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use votes_tally::membership::PartitionOwner;

    #[test]
    fn routes_follow_the_map() {
        let owner = |node: &str, core| {
            Some(PartitionOwner {
                node: node.into(),
                core,
                internal: "127.0.0.1:7000".parse().unwrap(),
            })
        };
        let map = FleetMap {
            owners: vec![owner("a", 1), owner("b", 0), None, owner("a", 5)],
            members: 3,
            ..Default::default()
        };
        assert_eq!(route(&map, "a", 2, 0), Route::Local { core: 1 });
        assert_eq!(
            route(&map, "a", 2, 1),
            Route::Remote {
                node: "b".into(),
                internal: "127.0.0.1:7000".parse().unwrap()
            }
        );
        assert_eq!(route(&map, "a", 2, 2), Route::NoOwner);
        assert_eq!(
            route(&map, "a", 2, 3),
            Route::NoOwner,
            "core 5 of a 2-core node"
        );
    }

    #[test]
    fn the_board_counts_changes_only() {
        let board = Arc::new(FleetBoard::default());
        let view = FleetView::new(board.clone());
        assert_eq!(view.map().0, 0);
        board.publish(FleetMap::default());
        assert_eq!(view.map().0, 1, "the first map counts even when empty");
        board.publish(FleetMap::default());
        assert_eq!(board.generation(), 1);
        let m = FleetMap {
            members: 1,
            ..Default::default()
        };
        board.publish(m.clone());
        assert_eq!(view.map(), (2, Rc::new(m)));
    }
}
