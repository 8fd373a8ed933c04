//! `votes-net`: the appliance's listeners on thread-per-core reactors (docs/design.md §1).
//!
//! * [`start_reactors`] runs one glommio executor per configured CPU. Each builds its own
//!   [`App`] from a [`CoreContext`] and serves HTTP/1.1 and h2c on SO_REUSEPORT listeners, or
//!   HTTP/1.1 and h2 over TLS ([`ListenerSpec::tls`], [`tls_server_config`]); each request
//!   carries a [`ConnInfo`] in its extensions.
//! * [`Mesh`] / [`Inbox`] carry bounded messages between cores; [`reply_channel`] answers back.
//! * [`Blocking`] runs blocking calls (Kafka commits) off the reactor.
//! * [`read_body_limited`] reads request bodies under a size limit.
//! * [`error_body()`] is the only shape an error takes on the wire (docs/design.md §4.2).

mod blocking;
mod body;
pub mod doorbell;
mod error;
pub mod error_body;
pub mod forward;
mod httpd;
mod listener;
mod mesh;
pub mod ports;
pub mod preflight;
mod rate;
mod reactor;
mod signal;
pub mod sse;
mod tls;
pub mod ws;

pub use blocking::{Blocking, BlockingError};
pub use body::{BodyLimitError, BoxBody, BoxError, RequestBody, read_body_limited};
pub use error::{NetError, TlsFileKind, TlsFileProblem};
pub use error_body::error_body;
pub use httpd::{
    Alpn, App, AppRequest, AppResponse, ConnInfo, HttpLimits, HttpStats, ListenerKind,
    ListenerSpec, LocalBoxFuture, detached_stream,
};
pub use mesh::{Inbox, Mesh, ReplyDropped, ReplyRx, ReplyTx, SendError, reply_channel};
pub use ports::loopback_listener_port;
pub use rate::RateLimiter;
pub use reactor::{
    BoundListener, CoreContext, HttpStatsHandle, ReactorConfig, Reactors, ShutdownHandle,
    start_reactors,
};
pub use signal::{LocalNotify, LocalSignal, Wait};
pub use tls::{
    DevFleetPki, InternalTls, dev_fleet_pki, internal_tls, self_signed_dev_cert,
    self_signed_dev_cert_with_spki, tls_server_config,
};

/// Re-exported so apps name the same versions.
pub use {bytes, http, hyper, rustls};
