//! A doorbell: lets a thread that is not a reactor (a core's Kafka committer, its group
//! member) wake a reactor task at once, without the reactor polling.
//!
//! The messages themselves travel on a channel of the caller's choice (bounded, lock-free);
//! the doorbell only says "look now". It is one end of a Unix socket pair: the foreign thread
//! writes a byte with a non-blocking `send`, the reactor reads with glommio (io_uring), so a
//! sleeping reactor wakes like it does for network traffic. Rings coalesce: a full socket
//! buffer means the reactor has many wake-ups pending already, so a refused byte loses nothing.
//! Why not glommio's shared channels: both of their ends must live on glommio executors.

use std::io::{ErrorKind, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;

use futures_lite::AsyncReadExt;

/// The foreign thread's side: cheap to clone, `Send`.
#[derive(Clone)]
pub struct Ringer {
    socket: Arc<StdUnixStream>,
}

impl Ringer {
    /// Wakes the reactor that waits on the matching [`Bell`]; never blocks.
    pub fn ring(&self) {
        match (&*self.socket).write(&[1]) {
            Ok(_) => {}
            // Full: wake-ups are pending already. Gone: the reactor stopped listening.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::BrokenPipe) => {}
            Err(e) => tracing::debug!(error = %e, "doorbell ring"),
        }
    }
}

/// The reactor's side; must be created and used on the reactor that waits.
pub struct Bell {
    socket: glommio::net::UnixStream,
    buf: [u8; 64],
}

impl Bell {
    /// Resolves once the bell rang at least once since the last wait (all rings so far are
    /// consumed). `false` when every [`Ringer`] is gone.
    pub async fn wait(&mut self) -> bool {
        matches!(self.socket.read(&mut self.buf).await, Ok(n) if n > 0)
    }
}

/// A new doorbell. Call on the reactor that will wait on the [`Bell`].
pub fn doorbell() -> std::io::Result<(Bell, Ringer)> {
    let (reactor_end, thread_end) = StdUnixStream::pair()?;
    thread_end.set_nonblocking(true)?;
    let fd = reactor_end.into_raw_fd();
    // SAFETY: `fd` is an open socket that `into_raw_fd` just released; glommio's stream takes
    // sole ownership of it and closes it on drop.
    let socket = unsafe { <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok((
        Bell {
            socket,
            buf: [0; 64],
        },
        Ringer {
            socket: Arc::new(thread_end),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_from_another_thread_wakes_the_waiting_reactor_and_rings_coalesce() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                let (mut bell, ringer) = doorbell().unwrap();
                let (tx, rx) = std::sync::mpsc::channel();
                let r = ringer.clone();
                let t = std::thread::spawn(move || {
                    for i in 0..1_000u32 {
                        tx.send(i).unwrap();
                        r.ring();
                    }
                });
                let mut seen = 0u32;
                while seen < 1_000 {
                    assert!(bell.wait().await, "a ringer is alive");
                    while rx.try_recv().is_ok() {
                        seen += 1;
                    }
                }
                t.join().unwrap();
                drop(ringer);
                // Rings not yet read are still delivered; then the closed end says so.
                let mut pending = 0;
                while bell.wait().await {
                    pending += 1;
                    assert!(pending <= 1_000, "every ringer gone");
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
