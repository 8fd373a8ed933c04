//! How a long-running role learns to stop: SIGTERM (what systemd sends) or SIGINT (a
//! terminal's Ctrl-C), whichever comes first.

/// Resolves at the first SIGTERM or SIGINT. Needs a tokio runtime with its signal driver
/// (`enable_all`); installing the handler fails only if that is missing, a bug of the caller.
pub async fn requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
