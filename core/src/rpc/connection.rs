//! The frame codec and the hello exchange (with the cluster secret's proofs) that opens
//! every connection.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::secret::{ClusterKey, Side};
use super::{Frame, Hello, MAX_FRAME_BYTES};

/// A TCP stream cut into length-delimited frames.
pub type FramedStream = Framed<TcpStream, LengthDelimitedCodec>;

/// How long either side waits for the other's hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Wraps a connected stream in the frame codec, with Nagle off: requests are small and
/// latency-bound, and the writers batch frames themselves.
pub fn framed(stream: TcpStream) -> FramedStream {
    // Nagle only delays small frames; failing to turn it off costs latency, not correctness.
    let _ = stream.set_nodelay(true);
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec();
    Framed::new(stream, codec)
}

/// Encodes a frame body.
///
/// # Errors
/// postcard's error when the value cannot be encoded.
pub fn encode<T: Serialize>(id: u64, body: &T) -> Result<Bytes, postcard::Error> {
    postcard::to_stdvec(&Frame { id, body }).map(Bytes::from)
}

/// Decodes a frame, or says why it is not one.
///
/// # Errors
/// postcard's error when the bytes are not a `Frame<T>`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<Frame<T>, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Sends our hello and reads the peer's, failing with the reason when the peer's does not
/// match `ours`; then proves the cluster secret and checks the peer's proof, in the order
/// [`super::secret`] describes for `side`.
///
/// # Errors
/// A description of the problem: I/O failure, time-out, an undecodable hello, a mismatch, or
/// a proof of the cluster secret that is missing or wrong.
pub async fn exchange_hello(
    stream: &mut FramedStream,
    ours: Hello,
    key: &ClusterKey,
    side: Side,
) -> Result<(), String> {
    let bytes = postcard::to_stdvec(&ours).map_err(|e| format!("cannot encode hello: {e}"))?;
    send(stream, Bytes::from(bytes), "hello").await?;
    let frame = receive(stream, "hello").await?;
    let theirs: Hello =
        postcard::from_bytes(&frame).map_err(|e| format!("undecodable hello: {e}"))?;
    if let Some(problem) = theirs.mismatch(&ours) {
        return Err(problem);
    }
    let proof = key.proof(
        side,
        ours.service,
        ours.protocol,
        &ours.nonce,
        &theirs.nonce,
    );
    let check = |frame: &[u8], peer: Side| {
        key.verify(
            frame,
            peer,
            ours.service,
            ours.protocol,
            &theirs.nonce,
            &ours.nonce,
        )
    };
    match side {
        Side::Client => {
            send(stream, Bytes::copy_from_slice(&proof), "proof").await?;
            let frame = receive(stream, "proof").await?;
            if !check(&frame, Side::Server) {
                return Err("the server did not prove the cluster secret (do both use the same --cluster-secret-file?)".to_owned());
            }
        }
        Side::Server => {
            let frame = receive(stream, "proof").await?;
            if !check(&frame, Side::Client) {
                return Err("the peer did not prove the cluster secret (do both use the same --cluster-secret-file?)".to_owned());
            }
            send(stream, Bytes::copy_from_slice(&proof), "proof").await?;
        }
    }
    Ok(())
}

async fn send(stream: &mut FramedStream, frame: Bytes, what: &str) -> Result<(), String> {
    stream
        .send(frame)
        .await
        .map_err(|e| format!("cannot send the {what}: {e}"))
}

async fn receive(stream: &mut FramedStream, what: &str) -> Result<bytes::BytesMut, String> {
    let reply = tokio::time::timeout(HELLO_TIMEOUT, stream.next())
        .await
        .map_err(|_| format!("no {what} within {HELLO_TIMEOUT:?}"))?;
    match reply {
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(format!("cannot read the {what}: {e}")),
        None => Err(format!("connection closed before the {what}")),
    }
}
