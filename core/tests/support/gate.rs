//! A TCP forwarder that a test can close, to cut a client off from ZooKeeper (a network
//! partition of one process) while the server keeps running and expires its session.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards connections from [`Gate::address`] to a target while open.
pub struct Gate {
    address: SocketAddr,
    open: watch::Sender<bool>,
}

impl Gate {
    /// Starts an open gate in front of `target`, on the current tokio runtime.
    pub async fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the gate");
        let address = listener.local_addr().expect("gate address");
        let (open, _) = watch::channel(true);
        tokio::spawn(accept(listener, target, open.subscribe()));
        Gate { address, open }
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
}

async fn accept(listener: TcpListener, target: SocketAddr, open: watch::Receiver<bool>) {
    while let Ok((client, _)) = listener.accept().await {
        if *open.borrow() {
            tokio::spawn(forward(client, target, open.clone()));
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
