//! Policy components kept in ZooKeeper, content-addressed by sha256, so that every gateway
//! can load exactly the component the cluster names (`cartdb policy deploy`).
//!
//! ```text
//! /policies/<sha256>      {"kind": "placement", "name": "crush.wasm", "bytes": 177342,
//!                          "chunks": 1, "deployed_ms": 1764662400000, "deployed_by": "..."}
//! /policies/<sha256>/0    the component's bytes 0 .. 512 KiB
//! /policies/<sha256>/1    the next 512 KiB, ...
//! ```
//!
//! Components may be larger than ZooKeeper's 1 MiB znode limit (`jute.maxbuffer`), which is
//! kept as it is: raising it would raise it for every znode and every client. Chunks are
//! written first and the header last, so a header names only complete uploads; a reader
//! still checks the size and the sha256 of what it reassembles, since ZooKeeper data is
//! untrusted. How many components are kept is bounded by the caller, who prunes those no
//! longer named by the policy history ([`Coordinator::prune_policies`]).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zookeeper_client::CreateMode;

use super::{CoordError, Coordinator};

/// Parent of the stored components.
const POLICIES: &str = "/policies";

/// Bytes per chunk znode: half of ZooKeeper's default 1 MiB limit, leaving room for the
/// request's own framing.
pub const CHUNK_BYTES: usize = 512 * 1024;

/// Largest component stored (the gateways' `PolicyLimits::max_file_bytes` is 16 MiB too).
pub const MAX_POLICY_BYTES: usize = 16 << 20;

/// What a stored component is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Placement,
    Merge,
}

impl PolicyKind {
    /// `placement` or `merge`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Placement => "placement",
            Self::Merge => "merge",
        }
    }
}

/// The header znode of a stored component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHeader {
    pub kind: PolicyKind,
    /// The file name it was deployed from (for people; the sha256 identifies it).
    pub name: String,
    pub bytes: u64,
    pub chunks: u32,
    pub deployed_ms: u64,
    pub deployed_by: String,
}

/// A component as stored: its header and bytes, checked against its sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPolicy {
    pub sha256: String,
    pub header: PolicyHeader,
    pub bytes: Vec<u8>,
}

/// The sha256 of `bytes`, as lowercase hex: a component's name in the store.
pub fn policy_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn blob_path(sha256: &str) -> String {
    format!("{POLICIES}/{sha256}")
}

/// Whether `sha256` is 64 lowercase hex digits (anything else never names a znode here).
pub fn is_sha256(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Coordinator {
    /// Stores a component (if not stored already) and answers its sha256.
    ///
    /// # Errors
    /// [`CoordError::InvalidPolicy`] when it is empty or larger than [`MAX_POLICY_BYTES`];
    /// the failed ZooKeeper call.
    pub async fn store_policy(
        &self,
        kind: PolicyKind,
        name: &str,
        bytes: &[u8],
        deployed_by: &str,
        deployed_ms: u64,
    ) -> Result<String, CoordError> {
        if bytes.is_empty() || bytes.len() > MAX_POLICY_BYTES {
            return Err(CoordError::InvalidPolicy {
                sha256: String::new(),
                problem: format!(
                    "a component must be 1 to {MAX_POLICY_BYTES} bytes, this one is {}",
                    bytes.len()
                ),
            });
        }
        let sha256 = policy_sha256(bytes);
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        let header = PolicyHeader {
            kind,
            name: name.chars().take(256).collect(),
            bytes: bytes.len() as u64,
            chunks: u32::try_from(chunks.len()).unwrap_or(u32::MAX),
            deployed_ms,
            deployed_by: deployed_by.chars().take(256).collect(),
        };
        let header_json = serde_json::to_vec(&header).unwrap_or_default();
        let path = blob_path(&sha256);
        let (path, chunks, header_json) = (&path, &chunks, &header_json);
        self.run("store policy", |zk| async move {
            zk.mkdir(POLICIES).await?;
            if let Some((data, _)) = zk.get(path).await?
                && serde_json::from_slice::<PolicyHeader>(&data).is_ok()
            {
                return Ok(());
            }
            // The parent with no header yet: readers take it for an unfinished upload.
            zk.create(path, b"", CreateMode::Persistent).await?;
            for (i, chunk) in chunks.iter().enumerate() {
                let chunk_path = format!("{path}/{i}");
                zk.create(&chunk_path, chunk, CreateMode::Persistent)
                    .await?;
            }
            zk.set(path, header_json, -1).await?;
            Ok(())
        })
        .await?;
        Ok(sha256)
    }

    /// Reads a stored component back and checks it.
    ///
    /// # Errors
    /// [`CoordError::InvalidPolicy`] when `sha256` is malformed, not stored (or still being
    /// uploaded), or what is stored does not hash to it; the failed ZooKeeper call.
    pub async fn fetch_policy(&self, sha256: &str) -> Result<StoredPolicy, CoordError> {
        let invalid = |problem: String| CoordError::InvalidPolicy {
            sha256: sha256.to_owned(),
            problem,
        };
        if !is_sha256(sha256) {
            return Err(invalid("not a sha256 (64 lowercase hex digits)".to_owned()));
        }
        let path = blob_path(sha256);
        let path = &path;
        let (header, chunks) = self
            .run("fetch policy", |zk| async move {
                let Some((data, _)) = zk.get(path).await? else {
                    return Ok(None);
                };
                let Ok(header) = serde_json::from_slice::<PolicyHeader>(&data) else {
                    return Ok(Some((None, Vec::new())));
                };
                let mut chunks = Vec::new();
                for i in 0..header.chunks.min(64) {
                    match zk.get(&format!("{path}/{i}")).await? {
                        Some((chunk, _)) => chunks.push(chunk),
                        None => break,
                    }
                }
                Ok(Some((Some(header), chunks)))
            })
            .await?
            .ok_or_else(|| invalid("no such component in ZooKeeper".to_owned()))?;
        let header = header.ok_or_else(|| {
            invalid("its upload is unfinished or its header is not valid JSON".to_owned())
        })?;
        let bytes = chunks.concat();
        if bytes.len() as u64 != header.bytes || bytes.len() > MAX_POLICY_BYTES {
            return Err(invalid(format!(
                "{} bytes stored, the header says {}",
                bytes.len(),
                header.bytes
            )));
        }
        let actual = policy_sha256(&bytes);
        if actual != sha256 {
            return Err(invalid(format!("the stored bytes hash to {actual}")));
        }
        Ok(StoredPolicy {
            sha256: sha256.to_owned(),
            header,
            bytes,
        })
    }

    /// Deletes every stored component whose sha256 is not in `keep`; answers how many.
    ///
    /// # Errors
    /// The failed ZooKeeper call.
    pub async fn prune_policies(&self, keep: &[String]) -> Result<usize, CoordError> {
        self.run("prune policies", |zk| async move {
            let mut pruned = 0;
            for sha256 in zk.children(POLICIES).await? {
                if keep.contains(&sha256) {
                    continue;
                }
                let path = blob_path(&sha256);
                for chunk in zk.children(&path).await? {
                    zk.delete(&format!("{path}/{chunk}"), -1).await?;
                }
                pruned += usize::from(zk.delete(&path, -1).await?);
            }
            Ok(pruned)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_headers() {
        let sha = policy_sha256(b"abc");
        assert!(is_sha256(&sha));
        assert!(!is_sha256("ABC"));
        assert!(!is_sha256(&sha.to_uppercase()));
        assert!(!is_sha256(&format!("{sha}0")));
        assert_eq!(blob_path(&sha), format!("/policies/{sha}"));
        let header = PolicyHeader {
            kind: PolicyKind::Placement,
            name: "crush.wasm".into(),
            bytes: 3,
            chunks: 1,
            deployed_ms: 1,
            deployed_by: "test".into(),
        };
        let json = serde_json::to_string(&header).unwrap_or_default();
        assert!(json.contains("\"kind\":\"placement\""), "{json}");
        assert_eq!(
            serde_json::from_str::<PolicyHeader>(&json).ok(),
            Some(header)
        );
        assert_eq!(PolicyKind::Merge.name(), "merge");
    }
}
