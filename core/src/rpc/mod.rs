//! Framed RPC between cartdb processes.
//!
//! Every message is one length-delimited frame (a 4-byte big-endian length, then a postcard
//! body) holding a [`Frame`]: a request id and a body. Request ids let many requests share one
//! TCP connection concurrently; replies may come back in any order.
//!
//! ```text
//! client                                   server
//!   | -- Hello{magic, protocol, service, ..> |   refuses a wrong service or version
//!   | <-- Hello{magic, protocol, service, .. |
//!   | -- proof of the cluster secret ------> |   refuses a peer without the secret
//!   | <-- proof of the cluster secret ------ |
//!   | -- Frame{id: 1, Apply..} ------------> |   each request is served in its own task
//!   | -- Frame{id: 2, ReadUser..} ---------> |
//!   | <-- Frame{id: 2, UserItems..} -------- |
//!   | <-- Frame{id: 1, Applied..} ---------- |
//! ```
//!
//! A peer that sends an oversize or undecodable frame has its connection closed with a log
//! line naming the peer and the problem; the server keeps serving everyone else.
//!
//! # Layout
//! - [`connection`]: the codec, the hello exchange and frame encoding.
//! - [`client`]: [`RpcClient`], one multiplexed connection; [`PeerClient`], one that reconnects.
//! - [`faults`]: [`Faults`], the test-only hook that drops or delays a client's calls.
//! - [`server`]: the [`Service`] trait and [`serve`], the accept loop.
//! - [`secret`]: [`ClusterKey`], the cluster secret and its HMAC challenge.

pub mod client;
pub mod connection;
pub mod faults;
pub mod secret;
pub mod server;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::{PeerClient, RpcClient};
pub use faults::{Fault, Faults};
pub use secret::{ClusterKey, SecretError};
pub use server::{ServeLimits, Service, serve, serve_with};

use crate::wire::ServiceKind;

/// The largest frame either side accepts. Carts are small; a frame this large is a bug or an
/// attack, and refusing it bounds the memory one connection can make a process allocate.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The body of a reply frame: the service's answer, or why there is none. An answer too
/// large for a frame becomes [`ReplyBody::TooLarge`], so it fails only its own request
/// instead of the connection and every request in flight on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyBody<T> {
    Answer(T),
    TooLarge { bytes: u64, limit: u64 },
}

/// One message on a connection: the request id it belongs to and its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame<T> {
    pub id: u64,
    pub body: T,
}

/// Why an RPC failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A recent connection attempt failed and the peer is not retried until the backoff ends.
    #[error("{addr} is unreachable (last connection attempt failed; retrying after a backoff)")]
    Unreachable { addr: String },
    /// The peer is not the service we expected, or speaks another protocol version.
    #[error("handshake with {addr} failed: {problem}")]
    Handshake { addr: String, problem: String },
    /// No reply within the deadline.
    #[error("{addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    /// The connection closed before the reply arrived.
    #[error("connection to {addr} closed")]
    ConnectionClosed { addr: String },
    /// The peer's answer was larger than a frame may be ([`MAX_FRAME_BYTES`]).
    #[error("{addr} answered with {bytes} bytes, over the {limit}-byte frame limit")]
    ReplyTooLarge {
        addr: String,
        bytes: u64,
        limit: u64,
    },
    /// The request could not be encoded (a bug).
    #[error("cannot encode a request for {addr}: {source}")]
    Encode {
        addr: String,
        #[source]
        source: postcard::Error,
    },
}

/// The first frame on every connection, in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`Hello::MAGIC`]: tells a cartdb peer from something else on the port.
    pub magic: [u8; 6],
    pub protocol: u16,
    pub service: ServiceKind,
    /// Fresh random bytes for this connection, covered by both proofs of the cluster
    /// secret ([`secret`]).
    pub nonce: [u8; secret::NONCE_BYTES],
}

impl Hello {
    pub const MAGIC: [u8; 6] = *b"cartdb";

    /// The hello of this build for `service`, with a fresh nonce.
    pub fn new(service: ServiceKind) -> Self {
        Self {
            magic: Self::MAGIC,
            protocol: crate::wire::PROTOCOL_VERSION,
            service,
            nonce: rand::random(),
        }
    }

    /// Why `self`, received from a peer, is not what `expected` is, if it is not.
    pub fn mismatch(&self, expected: &Hello) -> Option<String> {
        if self.magic != Self::MAGIC {
            Some("the peer is not a cartdb process".to_owned())
        } else if self.protocol != expected.protocol {
            Some(format!(
                "protocol version {} is not the expected {}",
                self.protocol, expected.protocol
            ))
        } else if self.service != expected.service {
            Some(format!(
                "the peer is a {:?}, not a {:?}",
                self.service, expected.service
            ))
        } else {
            None
        }
    }
}
