//! [`ClusterKey`]: the cluster secret every cartdb process holds, and the mutual HMAC
//! challenge that proves it in the hello of every RPC connection.
//!
//! Without it, anything that can reach a gateway's or data node's port could set any
//! cart's quantity or any product's price, bypassing the API server's admin token. The
//! exchange, after the two [`super::Hello`]s (each carrying a fresh random nonce):
//!
//! ```text
//! client                                                    server
//!   | -- Hello{.., nonce: c} ---------------------------------> |
//!   | <- Hello{.., nonce: s} ---------------------------------- |
//!   | -- HMAC(K, "client" | service | protocol | c | s) ------> |  checks it first: a peer
//!   | <- HMAC(K, "server" | service | protocol | s | c) ------- |  without K learns nothing
//! ```
//!
//! Both nonces are in both proofs, so a proof cannot be replayed on another connection; the
//! role label keeps a server's proof from being reflected back as a client's. The server
//! checks the client's proof before it sends its own, so it is never an oracle that MACs
//! a nonce of the client's choosing. The proofs are compared in constant time (`hmac`'s
//! `verify_slice`). The secret itself never crosses the wire.
//!
//! The secret comes from a file (`--cluster-secret-file`, which `scripts/start-cluster.sh`
//! and the compose scripts generate) or the environment (`CARTDB_CLUSTER_SECRET`).

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::ServiceKind;

/// The environment variable that may hold the secret itself.
pub const SECRET_ENV: &str = "CARTDB_CLUSTER_SECRET";
/// Fewest bytes a secret may have: 128 bits, the strength of the HMAC's shortest sensible key.
pub const MIN_SECRET_BYTES: usize = 16;
/// Size of a hello's nonce and of a proof.
pub const NONCE_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Which end of a connection a proof comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Client => b"cartdb rpc client proof",
            Self::Server => b"cartdb rpc server proof",
        }
    }
}

/// Why the cluster secret could not be loaded. Each names where it looked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Neither a file nor the environment variable was given.
    #[error(
        "no cluster secret: pass --cluster-secret-file (or CARTDB_CLUSTER_SECRET_FILE), or set {SECRET_ENV}; scripts/start-cluster.sh writes one to <cluster dir>/cluster-secret"
    )]
    Missing,
    /// The file could not be read.
    #[error("cannot read the cluster secret file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The secret is shorter than [`MIN_SECRET_BYTES`] (surrounding whitespace removed).
    #[error(
        "the cluster secret from {origin} has {len} bytes; it needs at least {MIN_SECRET_BYTES}"
    )]
    TooShort { origin: String, len: usize },
}

/// The cluster secret, kept only as an HMAC key. Its `Debug` output shows nothing of it.
#[derive(Clone)]
pub struct ClusterKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A key from the secret's bytes, surrounding ASCII whitespace removed (a file usually
    /// ends with a newline). `origin` names where they came from, for the error.
    ///
    /// # Errors
    /// [`SecretError::TooShort`] below [`MIN_SECRET_BYTES`].
    pub fn new(secret: &[u8], origin: &str) -> Result<Self, SecretError> {
        let secret = secret.trim_ascii();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort {
                origin: origin.to_owned(),
                len: secret.len(),
            });
        }
        // HMAC takes keys of any length, so this cannot fail.
        #[allow(clippy::expect_used)]
        let mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        Ok(Self { mac })
    }

    /// The key from `file` if given, else from [`SECRET_ENV`].
    ///
    /// # Errors
    /// [`SecretError`] naming the file or variable and the problem.
    pub fn load(file: Option<&Path>) -> Result<Self, SecretError> {
        if let Some(path) = file {
            let bytes = std::fs::read(path).map_err(|source| SecretError::Unreadable {
                path: path.to_owned(),
                source,
            })?;
            return Self::new(&bytes, &path.display().to_string());
        }
        match std::env::var_os(SECRET_ENV) {
            Some(value) => Self::new(value.as_encoded_bytes(), SECRET_ENV),
            None => Err(SecretError::Missing),
        }
    }

    /// The password of the cluster's ZooKeeper digest identity: an HMAC of a fixed label,
    /// in hex, so it differs from anything the RPC proofs reveal and the secret itself
    /// never reaches ZooKeeper.
    pub fn zookeeper_password(&self) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"cartdb zookeeper digest password");
        hex::encode(mac.finalize().into_bytes())
    }

    /// The proof `side` sends: an HMAC over its role, the service and protocol of the
    /// connection, its own nonce and then the peer's.
    pub fn proof(
        &self,
        side: Side,
        service: ServiceKind,
        protocol: u16,
        own_nonce: &[u8; NONCE_BYTES],
        peer_nonce: &[u8; NONCE_BYTES],
    ) -> [u8; NONCE_BYTES] {
        self.proof_mac(side, service, protocol, own_nonce, peer_nonce)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `proof` is what `side` holding this key sends, given that side's nonce and
    /// the other's; compared in constant time.
    pub fn verify(
        &self,
        proof: &[u8],
        side: Side,
        service: ServiceKind,
        protocol: u16,
        their_nonce: &[u8; NONCE_BYTES],
        our_nonce: &[u8; NONCE_BYTES],
    ) -> bool {
        self.proof_mac(side, service, protocol, their_nonce, our_nonce)
            .verify_slice(proof)
            .is_ok()
    }

    fn proof_mac(
        &self,
        side: Side,
        service: ServiceKind,
        protocol: u16,
        first: &[u8; NONCE_BYTES],
        second: &[u8; NONCE_BYTES],
    ) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(side.label());
        mac.update(service.name().as_bytes());
        mac.update(&protocol.to_be_bytes());
        mac.update(first);
        mac.update(second);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: ServiceKind = ServiceKind::DataNode;

    fn key(secret: &str) -> ClusterKey {
        ClusterKey::new(secret.as_bytes(), "test").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_proof_verifies_only_with_the_same_secret_side_and_nonces() {
        let (k, other) = (key("0123456789abcdef"), key("0123456789abcdeX"));
        let (c, s) = ([1; NONCE_BYTES], [2; NONCE_BYTES]);
        let proof = k.proof(Side::Client, SERVICE, 4, &c, &s);
        assert!(k.verify(&proof, Side::Client, SERVICE, 4, &c, &s));
        assert!(!other.verify(&proof, Side::Client, SERVICE, 4, &c, &s));
        // Reflected as the server's proof, replayed with other nonces, or for another
        // service or protocol: refused.
        assert!(!k.verify(&proof, Side::Server, SERVICE, 4, &c, &s));
        assert!(!k.verify(&proof, Side::Client, SERVICE, 4, &s, &c));
        assert!(!k.verify(&proof, Side::Client, SERVICE, 4, &c, &[3; NONCE_BYTES]));
        assert!(!k.verify(&proof, Side::Client, ServiceKind::Gateway, 4, &c, &s));
        assert!(!k.verify(&proof, Side::Client, SERVICE, 3, &c, &s));
        assert!(!k.verify(&proof[..31], Side::Client, SERVICE, 4, &c, &s));
    }

    #[test]
    fn short_secrets_are_refused_and_whitespace_is_trimmed() {
        let err = ClusterKey::new(b"  short\n", "the file f").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the cluster secret from the file f has 5 bytes; it needs at least 16"
        );
        let (c, s) = ([1; NONCE_BYTES], [2; NONCE_BYTES]);
        let proof = key("0123456789abcdef").proof(Side::Server, SERVICE, 4, &s, &c);
        assert!(key("0123456789abcdef\n").verify(&proof, Side::Server, SERVICE, 4, &s, &c));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = ClusterKey::load(Some(Path::new("/nonexistent/secret"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/secret"), "{err}");
    }

    #[test]
    fn the_key_does_not_show_in_debug_output() {
        assert_eq!(format!("{:?}", key("0123456789abcdef")), "ClusterKey(..)");
    }
}
