//! Per-core wiring: what each reactor builds when it starts, from what the node prepared for
//! every core. A core gets its copy of the elections, its shard host (commit engine and
//! committer), the results role's renders, its forwarding link and listener, and the tasks
//! that live as long as it: the inbox from the other cores, the fan-out of tallies to the
//! Redis link, the metrics publisher, and on core 0 the follower of the elections topic.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use votes_net::CoreContext;
use votes_net::forward::{ForwardLimits, Forwarder, LinkSecurity};
use votes_tally::elections_log::{ElectionsReader, ElectionsView};
use votes_tally::fanout::LinkHandle;
use votes_tally::membership::{Assignment, OwnershipEvent, Rejoin};

use super::app::{AppHandle, CoreApp, CoreMsg, ForwardedVotes, NodeShared, broadcast_election};
use super::fleet::FleetView;
use super::metrics::CoreMetrics;
use super::results::{CoreResults, ResultsSettings};
use super::shards::{CommitSettings, ShardHost};

/// What the node prepared for its cores; each core takes its own parts once.
pub(super) struct CoreWiring {
    pub shared: Arc<NodeShared>,
    pub settings: Arc<CommitSettings>,
    /// The elections as loaded at start, before any vote.
    pub initial: ElectionsView,
    /// Each core's ownership events from its group member.
    pub events: Mutex<Vec<Option<mpsc::Receiver<OwnershipEvent>>>>,
    /// Each core's doorbell, filled here, handed to its group member by the node.
    pub ringers: Arc<Mutex<Vec<Option<votes_net::doorbell::Ringer>>>>,
    pub assignments: Vec<Assignment>,
    /// Each core's way to have its member's client replaced.
    pub rejoins: Vec<Rejoin>,
    pub link_security: Option<LinkSecurity>,
    pub link: Option<LinkHandle>,
    pub results: ResultsSettings,
    pub rate_per_addr: u32,
    pub rate_per_prefix: u32,
    /// Core 0's reader of the elections topic.
    pub elections_reader: Mutex<Option<ElectionsReader>>,
    /// Test-only: election changes from the topic applied this much later.
    pub elections_lag: Option<Duration>,
}

impl CoreWiring {
    /// Builds core `ctx.core_index()` and spawns its tasks; the app its listeners serve.
    pub(super) fn core(&self, ctx: &mut CoreContext<CoreMsg>) -> AppHandle {
        let core = ctx.core_index();
        let shared = &self.shared;
        let metrics = Rc::new(CoreMetrics::default());
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner())[core]
            .take()
            .expect("each core starts once");
        let elections = Rc::new(RefCell::new(self.initial.clone()));
        let shards_stop = votes_net::LocalSignal::new();
        let (shards, ringer) = ShardHost::new(
            core,
            self.settings.clone(),
            &shared.metrics.partitions,
            ctx.blocking().clone(),
            metrics.clone(),
            self.assignments[core].clone(),
            self.rejoins[core].clone(),
            elections.clone(),
            shared.roles.ingest.then_some(events),
            shards_stop.clone(),
        )
        .expect("starting the core's commit engine");
        self.ringers.lock().unwrap_or_else(|p| p.into_inner())[core] = Some(ringer);
        let internal = ctx.take_internal_listener();
        let forwarder = internal
            .as_ref()
            .zip(self.link_security.as_ref())
            .map(|(_, security)| {
                Forwarder::new(
                    shared.node.clone(),
                    security.clone(),
                    ForwardLimits::default(),
                )
            });
        let results = self.results_role(ctx, core, &elections);
        if let (Some(link), true) = (&self.link, shared.roles.ingest) {
            let fan_out = super::fan_out(shards.clone(), link.clone(), ctx.shutdown_signal());
            glommio::spawn_local(fan_out).detach();
        }
        let app = Rc::new(CoreApp {
            core,
            shared: shared.clone(),
            mesh: ctx.mesh().clone(),
            elections: elections.clone(),
            shards: shards.clone(),
            fleet: FleetView::new(shared.fleet.clone()),
            forwarder: forwarder.clone(),
            results: results.clone(),
            metrics: metrics.clone(),
            blocking: ctx.blocking().clone(),
            limiter: RefCell::new(votes_net::RateLimiter::new(
                self.rate_per_addr,
                self.rate_per_prefix,
            )),
            lookups: std::cell::Cell::new(0),
            held: std::cell::Cell::new(0),
            admin_writes: glommio::sync::Semaphore::new(1),
            shards_stop,
        });
        if let (Some(listener), Some(fwd), Some(security)) =
            (internal, &forwarder, &self.link_security)
        {
            glommio::spawn_local(votes_net::forward::serve_forwarded(
                listener,
                shared.node.clone(),
                security.clone(),
                Rc::new(ForwardedVotes(app.clone())),
                ForwardLimits::default(),
                fwd.stats.clone(),
                ctx.shutdown_signal(),
            ))
            .detach();
        }
        spawn_inbox(ctx, &shards, &elections);
        spawn_metrics(ctx, core, shared, metrics, &shards, forwarder, results);
        if core == 0 {
            self.follow_elections(ctx, core, &shards, elections);
        }
        AppHandle(app)
    }

    /// The results role on this core, when the node serves it: renders fed by the Redis link's
    /// board (core 0 also tells the link which elections to poll).
    fn results_role(
        &self,
        ctx: &CoreContext<CoreMsg>,
        core: usize,
        elections: &Rc<RefCell<ElectionsView>>,
    ) -> Option<Rc<CoreResults>> {
        let link = self.link.as_ref().filter(|_| self.shared.roles.results)?;
        let r = CoreResults::new(
            link.board.clone(),
            self.results.clone(),
            ctx.shutdown_signal(),
        );
        let watcher = (core == 0).then(|| link.clone());
        glommio::spawn_local(r.clone().run(elections.clone(), watcher)).detach();
        Some(r)
    }

    /// Core 0 follows the elections topic for changes made through other nodes and hands
    /// each to every core.
    fn follow_elections(
        &self,
        ctx: &CoreContext<CoreMsg>,
        core: usize,
        shards: &Rc<ShardHost>,
        elections: Rc<RefCell<ElectionsView>>,
    ) {
        let mut reader = self
            .elections_reader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .expect("core 0 starts once");
        let mesh = ctx.mesh().clone();
        let shards = shards.clone();
        let mut lagging = self.initial.clone();
        let elections_lag = self.elections_lag;
        glommio::spawn_local(async move {
            loop {
                let Some(lag) = elections_lag else {
                    // Applied here by poll_now; broadcast re-applies idempotently.
                    let changed = reader.poll_now(&mut elections.borrow_mut());
                    for e in changed {
                        broadcast_election(core, &mesh, &elections, &shards, e).await;
                    }
                    glommio::timer::sleep(Duration::from_millis(250)).await;
                    continue;
                };
                // Test-only: the node hears of every change `lag` late.
                for e in reader.poll_now(&mut lagging) {
                    let (mesh, elections, shards) =
                        (mesh.clone(), elections.clone(), shards.clone());
                    glommio::spawn_local(async move {
                        glommio::timer::sleep(lag).await;
                        broadcast_election(core, &mesh, &elections, &shards, e).await;
                    })
                    .detach();
                }
                glommio::timer::sleep(Duration::from_millis(250)).await;
            }
        })
        .detach();
    }
}

/// Messages from the other cores: votes for this core's shards, and election changes.
fn spawn_inbox(
    ctx: &mut CoreContext<CoreMsg>,
    shards: &Rc<ShardHost>,
    elections: &Rc<RefCell<ElectionsView>>,
) {
    let mut inbox = ctx.take_inbox().expect("the inbox is taken once, here");
    let shards = shards.clone();
    let elections = elections.clone();
    glommio::spawn_local(async move {
        while let Some((_, msg)) = inbox.recv().await {
            match msg {
                CoreMsg::Vote {
                    partition,
                    vote,
                    reply,
                } => shards.submit(partition, vote, reply),
                CoreMsg::Election(e) => {
                    elections.borrow_mut().apply(e.clone());
                    shards.election_changed(&e);
                }
            }
        }
    })
    .detach();
}

/// Publishes this core's figures to the node's metrics once a second.
fn spawn_metrics(
    ctx: &CoreContext<CoreMsg>,
    core: usize,
    shared: &NodeShared,
    metrics: Rc<CoreMetrics>,
    shards: &Rc<ShardHost>,
    forwarder: Option<Rc<Forwarder>>,
    results: Option<Rc<CoreResults>>,
) {
    let node_metrics = shared.metrics.clone();
    let http = ctx.http_stats();
    let shards = shards.clone();
    glommio::spawn_local(async move {
        loop {
            if let Some(f) = &forwarder {
                metrics.set_forward(&f.stats);
            }
            node_metrics.publish(core, metrics.snapshot(), shards.tallies());
            node_metrics.set_http(core, http.get());
            let subscribers = results.as_ref().map_or(0, |r| r.subscribers());
            node_metrics.set_sse_subscribers(core, subscribers);
            glommio::timer::sleep(Duration::from_secs(1)).await;
        }
    })
    .detach();
}
