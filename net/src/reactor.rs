//! Thread-per-core reactors: one glommio `LocalExecutor` pinned per configured CPU, each running
//! its own app instance, HTTP listeners and end of the cross-core mesh.

use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::blocking::Blocking;
use crate::error::NetError;
use crate::httpd::per_core::CoreHttp;
use crate::httpd::server::accept_loop;
use crate::httpd::{App, HttpLimits, HttpStats, ListenerKind, ListenerSpec};
use crate::listener::{BoundSpec, bind_all};
use crate::mesh::{Inbox, Mesh, MeshEnds, build_mesh};
use crate::preflight;
use crate::signal::LocalSignal;

/// What to run and with which limits.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// One reactor per entry, pinned to that CPU; core index = position in this list.
    pub cpus: Vec<usize>,
    pub listeners: Vec<ListenerSpec>,
    pub http: HttpLimits,
    /// Capacity of each directed core→core queue (and of a core's queue to itself).
    pub mesh_capacity: usize,
    /// Threads of each core's blocking pool (unpinned). Several librdkafka commits per core
    /// can then wait on the broker at once.
    pub blocking_threads: usize,
    /// Blocking calls admitted per core before [`crate::BlockingError::Saturated`].
    pub max_blocking_in_flight: usize,
    /// Bound on the whole shutdown: drain connections, wait for peers, `App::shutdown`.
    pub shutdown_grace: Duration,
    /// Bound on start-up (executor creation, mesh connection, `make_app`).
    pub start_timeout: Duration,
    /// Serve HTTP/3 on the UDP side of every public TLS listener (and advertise it).
    pub http3: bool,
    /// How long a reactor with nothing to do polls before it sleeps. Each sleep costs a
    /// `membarrier` (glommio's cross-reactor wake-up protocol: an IPI to every CPU of the
    /// process, an exit to the hypervisor on a VM) and a context switch; under load a short
    /// spin saves most of them, idle it costs the spin once per wake-up.
    pub spin_before_park: Option<Duration>,
}

impl ReactorConfig {
    pub fn new(cpus: Vec<usize>) -> Self {
        Self {
            cpus,
            listeners: Vec::new(),
            http: HttpLimits::default(),
            mesh_capacity: 1024,
            blocking_threads: 4,
            max_blocking_in_flight: 64,
            shutdown_grace: Duration::from_secs(10),
            start_timeout: Duration::from_secs(10),
            http3: true,
            spin_before_park: None,
        }
    }

    fn validate(&self) -> Result<(), NetError> {
        let bad = |m: &str| Err(NetError::Config(m.to_string()));
        if self.cpus.is_empty() {
            return bad("at least one CPU is required");
        }
        let mut sorted = self.cpus.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.cpus.len() {
            return bad("a CPU is listed twice");
        }
        if self.mesh_capacity == 0 || self.blocking_threads == 0 || self.max_blocking_in_flight == 0
        {
            return bad("mesh_capacity, blocking_threads and max_blocking_in_flight must be > 0");
        }
        for l in &self.listeners {
            if let Some(tls) = &l.tls {
                crate::tls::check_alpn(tls)
                    .map_err(|e| NetError::Config(format!("listener {}: {e}", l.addr)))?;
            }
        }
        self.http.validate().map_err(NetError::Config)
    }
}

/// What a core's app is given when it is built on its core.
pub struct CoreContext<M: Send + 'static> {
    index: usize,
    cpu: usize,
    mesh: Mesh<M>,
    inbox: Option<Inbox<M>>,
    blocking: Blocking,
    http: Rc<CoreHttp>,
    shutdown: LocalSignal,
    internal: Option<glommio::net::TcpListener>,
}

impl<M: Send + 'static> CoreContext<M> {
    /// This core's index, 0..cores().
    pub fn core_index(&self) -> usize {
        self.index
    }

    pub fn cores(&self) -> usize {
        self.mesh.cores()
    }

    /// The CPU this core is pinned to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Bounded senders to every core (this one included). Clone it to keep it.
    pub fn mesh(&self) -> &Mesh<M> {
        &self.mesh
    }

    /// This core's receiving end; `Some` once. The app must consume it (e.g. in a task it
    /// spawns with `glommio::spawn_local`), or senders will see their queues fill up.
    pub fn take_inbox(&mut self) -> Option<Inbox<M>> {
        self.inbox.take()
    }

    /// Off-reactor execution of blocking calls.
    pub fn blocking(&self) -> &Blocking {
        &self.blocking
    }

    /// Fires when this core starts shutting down (before connections are drained). Long-lived
    /// responses (SSE) should end when it fires: they count as in flight and otherwise hold
    /// the drain until `shutdown_grace` runs out.
    pub fn shutdown_signal(&self) -> LocalSignal {
        self.shutdown.clone()
    }

    /// This core's socket of the internal (node-to-node) listener, if one is configured; `Some`
    /// once. The app serves its own protocol on it.
    pub fn take_internal_listener(&mut self) -> Option<glommio::net::TcpListener> {
        self.internal.take()
    }

    /// A live view of this core's HTTP counters.
    pub fn http_stats(&self) -> HttpStatsHandle {
        HttpStatsHandle(self.http.clone())
    }
}

/// Reads one core's HTTP counters (from that core).
#[derive(Clone)]
pub struct HttpStatsHandle(Rc<CoreHttp>);

impl HttpStatsHandle {
    pub fn get(&self) -> HttpStats {
        self.0.stats()
    }
}

/// An address the reactors listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundListener {
    pub spec: ListenerSpec,
    /// The bound address (the real port when the spec asked for port 0).
    pub addr: SocketAddr,
}

/// Triggers shutdown of all reactors; `Send + Sync`, so a signal-handling thread may hold it.
#[derive(Clone)]
pub struct ShutdownHandle {
    // Locked only when shutting down, never on a request path.
    triggers: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
}

impl ShutdownHandle {
    /// Starts the shutdown of every reactor; idempotent, returns at once.
    pub fn trigger(&self) {
        let triggers =
            std::mem::take(&mut *self.triggers.lock().unwrap_or_else(|p| p.into_inner()));
        for t in triggers {
            // Err: that reactor is already gone.
            let _ = t.send(());
        }
    }
}

type CoreHandle = glommio::ExecutorJoinHandle<Result<(), NetError>>;

/// The running reactors.
pub struct Reactors {
    handles: Vec<Option<CoreHandle>>,
    shutdown: ShutdownHandle,
    listeners: Vec<BoundListener>,
}

impl Reactors {
    pub fn cores(&self) -> usize {
        self.handles.len()
    }

    pub fn listeners(&self) -> &[BoundListener] {
        &self.listeners
    }

    /// The bound address of the first plaintext listener of `kind`.
    pub fn local_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.find_addr(kind, false)
    }

    /// The bound address of the first TLS listener of `kind`.
    pub fn local_tls_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.find_addr(kind, true)
    }

    fn find_addr(&self, kind: ListenerKind, tls: bool) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.spec.kind == kind && l.spec.is_tls() == tls)
            .map(|l| l.addr)
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Stop accepting, let in-flight requests finish within `shutdown_grace`, then stop the
    /// executors. Returns at once; [`join`](Self::join) waits for the end.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Waits for every reactor to stop; the first failure is returned (all are joined).
    pub fn join(mut self) -> Result<(), NetError> {
        join_all(&mut self.handles)
    }
}

impl Drop for Reactors {
    /// Dropping without `join` must not leave pinned threads behind.
    fn drop(&mut self) {
        if self.handles.iter().any(Option::is_some) {
            self.shutdown.trigger();
            if let Err(e) = join_all(&mut self.handles) {
                tracing::warn!(error = %e, "reactor failed");
            }
        }
    }
}

fn join_all(handles: &mut [Option<CoreHandle>]) -> Result<(), NetError> {
    let mut first = Ok(());
    for (core, h) in handles.iter_mut().enumerate() {
        let Some(h) = h.take() else { continue };
        let r = match h.join() {
            Ok(r) => r,
            Err(glommio::GlommioError::BuilderError(glommio::BuilderErrorKind::ThreadPanic(p))) => {
                Err(NetError::ReactorPanicked {
                    core,
                    message: panic_message(&*p),
                })
            }
            Err(e) => Err(NetError::ReactorFailed {
                core,
                reason: e.to_string(),
            }),
        };
        if first.is_ok() {
            first = r;
        }
    }
    first
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Increments the shared drained count exactly once.
struct DrainedMark(Option<Arc<AtomicUsize>>);

impl DrainedMark {
    fn mark(&mut self) {
        if let Some(d) = self.0.take() {
            d.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Drop for DrainedMark {
    fn drop(&mut self) {
        self.mark();
    }
}

/// One listening socket of one core, with what it serves.
struct CoreListener {
    kind: ListenerKind,
    tls: Option<Arc<rustls::ServerConfig>>,
    proxy_protocol: bool,
    socket: socket2::Socket,
}

/// One core's UDP socket of a TLS listener, for HTTP/3.
struct CoreQuic {
    socket: socket2::Socket,
    config: quinn::ServerConfig,
    port: u16,
}

/// Everything one core needs, moved to its thread.
struct CoreBoot<M: Send + 'static> {
    index: usize,
    cpu: usize,
    cores: usize,
    mesh: MeshEnds<M>,
    listeners: Vec<CoreListener>,
    quic: Vec<CoreQuic>,
    cfg: ReactorConfig,
    ready: mpsc::SyncSender<Result<(), NetError>>,
    shutdown: oneshot::Receiver<()>,
    drained: Arc<AtomicUsize>,
}

/// Starts one reactor per `cfg.cpus` entry and returns once all of them serve (or the first
/// start-up failure, after stopping the others).
///
/// `make_app` runs on each core, inside its executor: it may `glommio::spawn_local` tasks
/// (e.g. the inbox consumer) and build `!Send` state.
///
/// Long because every core is spawned in one loop that must stop at the first failure with the
/// handles of those already started.
pub fn start_reactors<M, A, F>(cfg: ReactorConfig, make_app: F) -> Result<Reactors, NetError>
where
    M: Send + 'static,
    A: App,
    F: Fn(CoreContext<M>) -> A + Send + Sync + 'static,
{
    cfg.validate()?;
    for (kind, name) in [
        (ListenerKind::Admin, "admin"),
        (ListenerKind::Internal, "internal"),
    ] {
        if cfg.listeners.iter().filter(|l| l.kind == kind).count() > 1 {
            return Err(NetError::Config(format!("at most one {name} listener")));
        }
    }
    preflight::judge(&preflight::probe(), &cfg.cpus)?;
    let n = cfg.cpus.len();
    let bound = bind_all(&cfg.listeners, n, cfg.http.listen_backlog, cfg.http3)?;
    let listeners = bound
        .iter()
        .map(|b| BoundListener {
            spec: b.spec.clone(),
            addr: b.addr,
        })
        .collect();
    let (per_core, per_core_udp) = sockets_per_core(bound, n, &cfg.http)?;

    let make_app = Arc::new(make_app);
    let drained = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(n);
    let mut triggers = Vec::with_capacity(n);
    let mut readies = Vec::with_capacity(n);
    let mut fail: Option<NetError> = None;
    for (((index, mesh), sockets), quic) in build_mesh::<M>(n, cfg.mesh_capacity)
        .into_iter()
        .enumerate()
        .zip(per_core)
        .zip(per_core_udp)
    {
        let cpu = cfg.cpus[index];
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let boot = CoreBoot {
            index,
            cpu,
            cores: n,
            mesh,
            listeners: sockets,
            quic,
            cfg: cfg.clone(),
            ready: ready_tx,
            shutdown: shutdown_rx,
            drained: drained.clone(),
        };
        match spawn_core(boot, make_app.clone()) {
            Ok(h) => {
                handles.push(Some(h));
                triggers.push(shutdown_tx);
                readies.push(ready_rx);
            }
            Err(e) => {
                fail = Some(NetError::ReactorStart {
                    core: index,
                    cpu,
                    reason: e.to_string(),
                });
                break;
            }
        }
    }
    let shutdown = ShutdownHandle {
        triggers: Arc::new(Mutex::new(triggers)),
    };
    let mut reactors = Reactors {
        handles,
        shutdown,
        listeners,
    };
    if fail.is_none() {
        fail = await_ready(&mut reactors, &readies, &cfg).err();
    }
    match fail {
        None => Ok(reactors),
        Some(e) => {
            reactors.shutdown();
            let _ = join_all(&mut reactors.handles);
            Err(e)
        }
    }
}

/// Each core's TCP listeners, and its UDP sockets for HTTP/3 beside every TLS listener that
/// has them (with the listener's QUIC configuration).
#[allow(clippy::type_complexity)]
fn sockets_per_core(
    bound: Vec<BoundSpec>,
    n: usize,
    http: &HttpLimits,
) -> Result<(Vec<Vec<CoreListener>>, Vec<Vec<CoreQuic>>), NetError> {
    let mut per_core: Vec<Vec<CoreListener>> = (0..n).map(|_| Vec::new()).collect();
    let mut per_core_udp: Vec<Vec<CoreQuic>> = (0..n).map(|_| Vec::new()).collect();
    for BoundSpec {
        spec,
        sockets,
        udp,
        addr,
    } in bound
    {
        for (core, socket) in sockets {
            per_core[core].push(CoreListener {
                kind: spec.kind,
                tls: spec.tls.clone(),
                proxy_protocol: spec.proxy_protocol,
                socket,
            });
        }
        if let (false, Some(tls)) = (udp.is_empty(), &spec.tls) {
            let quic = crate::httpd::h3_server_config(tls, http)
                .map_err(|e| NetError::Config(format!("HTTP/3 on {addr}: {e}")))?;
            for (core, socket) in udp {
                per_core_udp[core].push(CoreQuic {
                    socket,
                    config: quic.clone(),
                    port: addr.port(),
                });
            }
        }
    }
    Ok((per_core, per_core_udp))
}

/// The thread of one reactor, pinned to its CPU, running [`core_main`].
fn spawn_core<M, A, F>(
    boot: CoreBoot<M>,
    make_app: Arc<F>,
) -> glommio::Result<glommio::ExecutorJoinHandle<Result<(), NetError>>, ()>
where
    M: Send + 'static,
    A: App,
    F: Fn(CoreContext<M>) -> A + Send + Sync + 'static,
{
    let mut builder = LocalExecutorBuilder::new(Placement::Fixed(boot.cpu));
    if let Some(spin) = boot.cfg.spin_before_park {
        builder = builder.spin_before_park(spin);
    }
    builder
        .name(&format!("votes-core{}", boot.index))
        // We do no storage DMA: the minimum (glommio rounds up to 64 KiB) keeps the locked
        // memory per core small.
        .io_memory(64 << 10)
        .blocking_thread_pool_placement(PoolPlacement::Unbound(boot.cfg.blocking_threads))
        .spawn(move || core_main(boot, make_app))
}

/// Waits, up to the start timeout, until every core reports that it serves; the first
/// failure (a core's own error, a thread that ended before reporting, the timeout) is the
/// answer.
fn await_ready(
    reactors: &mut Reactors,
    readies: &[mpsc::Receiver<Result<(), NetError>>],
    cfg: &ReactorConfig,
) -> Result<(), NetError> {
    let until = Instant::now() + cfg.start_timeout;
    for (core, ready) in readies.iter().enumerate() {
        let left = until.saturating_duration_since(Instant::now());
        match ready.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(NetError::StartTimeout(cfg.start_timeout));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The thread ended before reporting: executor creation failed, or a panic.
                let h = reactors.handles[core].take().expect("joined once");
                let reason = match join_all(&mut [Some(h)]) {
                    Err(e) => e.to_string(),
                    Ok(()) => "stopped before becoming ready".into(),
                };
                return Err(NetError::ReactorStart {
                    core,
                    cpu: cfg.cpus[core],
                    reason,
                });
            }
        }
    }
    Ok(())
}

/// One reactor's life: its mesh connected, its app made, its listeners served until shutdown,
/// then drained.
///
/// Long because a core's start-up order is its contract with the others (mesh connected before
/// the app is made, ready reported only once every listener is served).
async fn core_main<M, A, F>(boot: CoreBoot<M>, make_app: Arc<F>) -> Result<(), NetError>
where
    M: Send + 'static,
    A: App,
    F: Fn(CoreContext<M>) -> A + Send + Sync + 'static,
{
    let CoreBoot {
        index,
        cpu,
        cores,
        mesh,
        listeners,
        quic,
        cfg,
        ready,
        shutdown: trigger,
        drained,
    } = boot;
    // Counts this core as drained however it leaves (early return, panic): peers waiting for
    // everyone to drain must not wait out the whole grace for a core that is already gone.
    let drained_mark = DrainedMark(Some(drained.clone()));
    let shutdown = LocalSignal::new();
    {
        let shutdown = shutdown.clone();
        glommio::spawn_local(async move {
            // Ok: asked to stop. Err: the Reactors handle is gone; stop as well.
            let _ = trigger.await;
            shutdown.fire();
        })
        .detach();
    }

    // Every core must connect its mesh ends before any can use them; a peer that died would
    // block us here forever, so shutdown (triggered by start_reactors on failure) cancels it.
    let connected = futures_lite::future::or(async { Some(mesh.connect().await) }, async {
        shutdown.wait().await;
        None
    })
    .await;
    let Some((mesh, inbox)) = connected else {
        let _ = ready.send(Err(NetError::ReactorStart {
            core: index,
            cpu,
            reason: "cancelled".into(),
        }));
        return Ok(());
    };

    let http = CoreHttp::new(cfg.http.clone(), shutdown.clone());
    let (internal, listeners) = take_internal(listeners);
    let ctx = CoreContext {
        index,
        cpu,
        mesh,
        inbox: Some(inbox),
        blocking: Blocking::new(cfg.max_blocking_in_flight),
        http: http.clone(),
        shutdown: shutdown.clone(),
        internal,
    };
    debug_assert_eq!(ctx.cores(), cores);
    let app = match std::panic::catch_unwind(AssertUnwindSafe(|| make_app(ctx))) {
        Ok(app) => Rc::new(app),
        Err(p) => {
            let reason = format!("make_app panicked: {}", panic_message(&*p));
            let _ = ready.send(Err(NetError::ReactorStart {
                core: index,
                cpu,
                reason,
            }));
            return Ok(());
        }
    };
    serve_listeners(&http, &app, listeners, quic);
    let _ = ready.send(Ok(()));
    tracing::info!(core = index, cpu, "reactor serving");

    shutdown.wait().await;
    let clean = drain(&http, &app, &cfg, index, cores, &drained, drained_mark).await;
    tracing::info!(core = index, clean, "reactor stopped");
    Ok(())
}

/// The internal (forwarding) listener, which the app accepts on itself, apart from the
/// HTTP listeners.
fn take_internal(
    listeners: Vec<CoreListener>,
) -> (Option<glommio::net::TcpListener>, Vec<CoreListener>) {
    let (internal, listeners): (Vec<_>, Vec<_>) = listeners
        .into_iter()
        .partition(|l| l.kind == ListenerKind::Internal);
    let internal = internal.into_iter().next().map(|l| {
        // SAFETY: the fd is a bound, listening TCP socket we own; ownership moves to glommio.
        unsafe {
            <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(
                l.socket.into_raw_fd(),
            )
        }
    });
    (internal, listeners)
}

/// Spawns the accept loop of each TCP listener and the HTTP/3 endpoint of each UDP socket.
fn serve_listeners<A: App>(
    http: &Rc<CoreHttp>,
    app: &Rc<A>,
    listeners: Vec<CoreListener>,
    quic: Vec<CoreQuic>,
) {
    for CoreListener {
        kind,
        tls,
        proxy_protocol,
        socket,
    } in listeners
    {
        // SAFETY: the fd is a bound, listening TCP socket we own; ownership moves to glommio.
        let listener = unsafe {
            <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(socket.into_raw_fd())
        };
        let tls = tls.map(futures_rustls::TlsAcceptor::from);
        let from = super::httpd::server::Listening {
            kind,
            tls,
            proxy_protocol,
        };
        glommio::spawn_local(accept_loop(http.clone(), app.clone(), listener, from)).detach();
    }
    for CoreQuic {
        socket,
        config,
        port,
    } in quic
    {
        *http.alt_svc.borrow_mut() =
            http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok();
        glommio::spawn_local(crate::httpd::serve_h3(
            http.clone(),
            app.clone(),
            socket.into(),
            config,
        ))
        .detach();
    }
}

/// Drains this core's connections, waits (up to the grace) for the other cores to drain as
/// well, then shuts the app down; true when its connections finished in time.
async fn drain<A: App>(
    http: &CoreHttp,
    app: &Rc<A>,
    cfg: &ReactorConfig,
    index: usize,
    cores: usize,
    drained: &AtomicUsize,
    mut drained_mark: DrainedMark,
) -> bool {
    let deadline = Instant::now() + cfg.shutdown_grace;
    let clean = http.drain(deadline).await;
    // Wait for the other cores to drain too: their in-flight requests may still need this
    // core's mesh inbox and replies. Polling, but only during shutdown.
    drained_mark.mark();
    while drained.load(Ordering::Acquire) < cores && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    let app2 = app.clone();
    if glommio::timer::timeout(left, async move {
        app2.shutdown().await;
        Ok(())
    })
    .await
    .is_err()
    {
        tracing::warn!(
            core = index,
            "App::shutdown did not finish within the grace"
        );
    }
    clean
}
