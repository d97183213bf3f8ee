//! [`ConnectionSlots`]: the connection cap every cartdb server keeps (the internal RPC and
//! the API's HTTP server), so idle or hostile peers cannot use up the process's file
//! descriptors.
//!
//! A connection above the cap is accepted and dropped at once: counted in the server's
//! refusal counter and logged at most once a second, so a flood does not flood the log too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most this often is a refusal logged.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Slots for open connections; one accept loop owns it.
#[derive(Debug)]
pub struct ConnectionSlots {
    slots: Arc<Semaphore>,
    max: usize,
    refused: metrics::Counter,
    last_logged: Option<Instant>,
}

impl ConnectionSlots {
    /// `max` slots; refusals count in `refused`.
    pub fn new(max: usize, refused: metrics::Counter) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            refused,
            last_logged: None,
        }
    }

    /// A slot for the connection from `peer`, held until the permit is dropped; `None` at
    /// the cap (counted and, at most once a second, logged): the caller drops the connection.
    pub fn admit(&mut self, peer: SocketAddr) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        self.refused.increment(1);
        if self.last_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            self.last_logged = Some(Instant::now());
            tracing::warn!(%peer, max = self.max, "refused connection: at the connection limit");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_and_come_back() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut slots = ConnectionSlots::new(2, metrics::Counter::noop());
        let first = slots.admit(peer).unwrap();
        let _second = slots.admit(peer).unwrap();
        assert!(slots.admit(peer).is_none());
        drop(first);
        assert!(slots.admit(peer).is_some());
    }
}
