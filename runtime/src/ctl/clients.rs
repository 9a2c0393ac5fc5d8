//! [`Clients`]: the accept loop the control socket and the admin listener
//! share: a thread that accepts, one thread per client up to a cap (a
//! client over it is told so and closed), and a stop that waits briefly
//! for the client threads.

use std::time::{Duration, Instant};

use crate::sync::{Arc, AtomicBool, Ordering};

/// A running accept loop.
pub(crate) struct Clients {
    stop: Arc<AtomicBool>,
    live: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Clients {
    /// Accept with `accept` (non-blocking: `WouldBlock` when nobody waits)
    /// on a thread named `name`; each client runs `serve` on a thread of its
    /// own (given the stop flag), at most `max` at once; a client over the
    /// cap gets `busy` instead.
    pub(crate) fn start<S: Send + 'static>(
        name: &str,
        max: usize,
        mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
        busy: impl Fn(S) + Send + 'static,
        serve: impl Fn(S, &AtomicBool) + Send + Sync + 'static,
    ) -> std::io::Result<Clients> {
        use std::sync::atomic::Ordering as O;
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, l) = (stop.clone(), live.clone());
        let serve = Arc::new(serve);
        let client_name = format!("{name}-client");
        let what = name.to_owned();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            while !s.load(Ordering::Acquire) {
                match accept() {
                    Ok(client) => {
                        if l.fetch_add(1, O::AcqRel) >= max {
                            l.fetch_sub(1, O::AcqRel);
                            busy(client);
                            continue;
                        }
                        let (serve, stop, live) = (serve.clone(), s.clone(), l.clone());
                        let spawned = std::thread::Builder::new().name(client_name.clone()).spawn(move || {
                            serve(client, &stop);
                            live.fetch_sub(1, O::AcqRel);
                        });
                        if spawned.is_err() {
                            l.fetch_sub(1, O::AcqRel);
                            tracing::warn!("{what}: cannot start a client thread");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => {
                        tracing::warn!("{what}: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
        Ok(Clients { stop, live, thread: Some(thread) })
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Client threads look at the flag between requests (at least every
        // 100 ms while they wait): give them a second.
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.live.load(std::sync::atomic::Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
