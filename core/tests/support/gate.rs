//! A TCP forwarder that a test can close, to cut a client off from ZooKeeper (a network
//! partition of one process) while the server keeps running and expires its session.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections from [`Gate::address`] to a target while open.
pub struct Gate {
    address: SocketAddr,
    open: watch::Sender<bool>,
    /// Connections being forwarded right now.
    forwarding: Arc<AtomicUsize>,
}

impl Gate {
    /// Starts an open gate in front of `target`, on the current tokio runtime.
    pub async fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the gate");
        let address = listener.local_addr().expect("gate address");
        let (open, _) = watch::channel(true);
        let forwarding = Arc::new(AtomicUsize::new(0));
        tokio::spawn(accept(
            listener,
            target,
            open.subscribe(),
            forwarding.clone(),
        ));
        Gate {
            address,
            open,
            forwarding,
        }
    }

    /// Where clients should connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Drops every forwarded connection and refuses new ones until [`Gate::open`].
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Closes the gate and waits (up to 10 s) until every forwarded connection is gone.
    pub async fn close_and_drain(&self) {
        self.close();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.forwarding.load(Ordering::SeqCst) > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "forwarded connections still open 10 s after closing the gate"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    open: watch::Receiver<bool>,
    forwarding: Arc<AtomicUsize>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if *open.borrow() {
            forwarding.fetch_add(1, Ordering::SeqCst);
            let forwarding = forwarding.clone();
            let open = open.clone();
            tokio::spawn(async move {
                forward(client, target, open).await;
                forwarding.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // A closed gate drops the accepted connection here: the client sees it reset.
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr, mut open: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
}
