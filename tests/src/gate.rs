//! A TCP gate: a loopback proxy in front of one server that a test can cut and heal, to
//! partition one process from it while every other process still reaches it (TiKV's fault
//! filters, at the network's edge). The cluster harness puts one in front of ZooKeeper for
//! a gateway that a test wants to cut from ZooKeeper alone
//! ([`crate::ClusterOptions::with_gateway_zk_gate`]).
//!
//! Cutting closes every connection through the gate at once and refuses new ones (they are
//! accepted and closed, as a peer behind a dead link would look to a client that retries);
//! healing lets new connections through again.

use std::sync::Arc;

use anyhow::Context;
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running gate; dropping it stops it and closes every connection through it.
pub struct TcpGate {
    address: String,
    open: Arc<watch::Sender<bool>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for TcpGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpGate")
            .field("address", &self.address)
            .field("open", &*self.open.borrow())
            .finish()
    }
}

impl TcpGate {
    /// A gate on a free loopback port in front of `target`, open.
    ///
    /// # Errors
    /// When no loopback port can be bound.
    pub async fn start(target: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a gate")?;
        let address = listener.local_addr()?.to_string();
        let open = Arc::new(watch::Sender::new(true));
        let task = tokio::spawn(accept(listener, target.to_owned(), open.clone()));
        Ok(Self {
            address,
            open,
            task,
        })
    }

    /// Where clients connect instead of the target.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Closes every connection through the gate and refuses new ones until [`Self::heal`].
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Lets new connections through again.
    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.open.send_replace(false);
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, target: String, open: Arc<watch::Sender<bool>>) {
    while let Ok((client, _)) = listener.accept().await {
        if !*open.borrow() {
            drop(client);
            continue;
        }
        tokio::spawn(relay(client, target.clone(), open.subscribe()));
    }
}

/// Copies both ways between `client` and a new connection to `target` until either side
/// closes or the gate is cut.
async fn relay(mut client: TcpStream, target: String, mut open: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = open.wait_for(|open| !*open) => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        address
    }

    async fn round_trip(address: &str) -> std::io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(b"ping").await?;
        let mut answer = vec![0; 4];
        stream.read_exact(&mut answer).await?;
        Ok(answer)
    }

    #[tokio::test]
    async fn a_cut_gate_closes_connections_and_a_healed_one_passes_them() {
        let gate = TcpGate::start(&echo_server().await).await.unwrap();
        assert_eq!(round_trip(gate.address()).await.unwrap(), b"ping");
        let mut open = TcpStream::connect(gate.address()).await.unwrap();
        open.write_all(b"ping").await.unwrap();
        let mut answer = [0; 4];
        open.read_exact(&mut answer).await.unwrap();
        gate.cut();
        // The connection made before the cut ends: a read sees the close (or a reset).
        let mut rest = Vec::new();
        let closed = open.read_to_end(&mut rest).await;
        assert!(closed.is_err() || rest.is_empty(), "{closed:?} {rest:?}");
        assert!(round_trip(gate.address()).await.is_err());
        gate.heal();
        assert_eq!(round_trip(gate.address()).await.unwrap(), b"ping");
    }
}
