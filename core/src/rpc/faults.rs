//! [`Faults`]: fault injection at the RPC client, for tests (openraft's network-layer hooks,
//! in cartdb's terms). A [`PeerClient`](super::PeerClient) given a `Faults` consults it on
//! every call and loses, delays or cuts calls to the peers a test names; production code
//! never gives one.
//!
//! The hook sits in the caller's process, so it can cut one process from chosen peers
//! while every other process still reaches them: a partition that a TCP proxy in front of
//! the peer could only make for everyone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What happens to a call to a faulty peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The request is lost on the way: the peer never sees it and the caller times out.
    DropRequest,
    /// The peer receives and serves the request, but its reply is lost: the caller times
    /// out without knowing the outcome.
    DropReply,
    /// The request is held this long before it is sent (within the caller's time limit).
    Delay(Duration),
}

/// The faults in force, by peer address; shared by clones and changeable while calls run.
#[derive(Clone, Debug, Default)]
pub struct Faults(Arc<Mutex<HashMap<String, Fault>>>);

impl Faults {
    /// No faults yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, calls to `addr` suffer `fault`.
    pub fn set(&self, addr: &str, fault: Fault) {
        self.lock().insert(addr.to_owned(), fault);
    }

    /// Calls to `addr` go through again.
    pub fn clear(&self, addr: &str) {
        self.lock().remove(addr);
    }

    /// Every call goes through again.
    pub fn heal(&self) {
        self.lock().clear();
    }

    /// The fault calls to `addr` suffer now, if any.
    pub fn for_peer(&self, addr: &str) -> Option<Fault> {
        self.lock().get(addr).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Fault>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_per_peer_and_heal() {
        let faults = Faults::new();
        let shared = faults.clone();
        shared.set("a:1", Fault::DropReply);
        shared.set("b:2", Fault::Delay(Duration::from_millis(5)));
        assert_eq!(faults.for_peer("a:1"), Some(Fault::DropReply));
        assert_eq!(faults.for_peer("c:3"), None);
        faults.clear("a:1");
        assert_eq!(faults.for_peer("a:1"), None);
        faults.heal();
        assert_eq!(faults.for_peer("b:2"), None);
    }
}
