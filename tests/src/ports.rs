//! Free loopback ports for the processes of a cluster.
//!
//! Ports are picked from 20000..32000, below Linux's ephemeral range (32768..60999), so that a
//! port handed to a data node cannot meanwhile be taken as the source port of some outgoing
//! connection while that node is down and waiting to be restarted on the same port. A
//! process-wide set makes sure two clusters of one test binary never get the same port, and
//! the starting point depends on the process id so that parallel test binaries start apart.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use anyhow::bail;

const FIRST: u16 = 20_000;
const LAST: u16 = 32_000;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that nothing listens on now and that this process has not handed out
/// before.
///
/// # Errors
/// When every port of the range is taken.
pub fn free_port() -> anyhow::Result<u16> {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = guard.get_or_insert_with(HashSet::new);
    let span = u32::from(LAST - FIRST);
    let start = (std::process::id().wrapping_mul(7919) + handed_out.len() as u32 * 13) % span;
    for step in 0..span {
        let port = FIRST + u16::try_from((start + step) % span)?;
        if !handed_out.contains(&port) && is_free(port) {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port in {FIRST}..{LAST}")
}

/// Whether a listener can be bound on `127.0.0.1:port` right now.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bindability is checked at hand-out time only: asserting afterwards that a port is
    /// still free would race with every other process on the machine.
    #[test]
    fn ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        for port in ports {
            assert!(
                (FIRST..LAST).contains(&port),
                "{port} is outside {FIRST}..{LAST}"
            );
        }
    }

    #[test]
    fn a_port_in_use_is_not_free() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!is_free(port));
    }
}
