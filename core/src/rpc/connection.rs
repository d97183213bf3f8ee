//! The frame codec and the hello exchange that opens every connection.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

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
/// match `ours`.
///
/// # Errors
/// A description of the problem: I/O failure, time-out, an undecodable hello or a mismatch.
pub async fn exchange_hello(stream: &mut FramedStream, ours: Hello) -> Result<(), String> {
    let bytes = postcard::to_stdvec(&ours).map_err(|e| format!("cannot encode hello: {e}"))?;
    stream
        .send(Bytes::from(bytes))
        .await
        .map_err(|e| format!("cannot send hello: {e}"))?;
    let reply = tokio::time::timeout(HELLO_TIMEOUT, stream.next())
        .await
        .map_err(|_| format!("no hello within {HELLO_TIMEOUT:?}"))?;
    let frame = match reply {
        Some(Ok(frame)) => frame,
        Some(Err(e)) => return Err(format!("cannot read hello: {e}")),
        None => return Err("connection closed during hello".to_owned()),
    };
    let theirs: Hello =
        postcard::from_bytes(&frame).map_err(|e| format!("undecodable hello: {e}"))?;
    match theirs.mismatch(&ours) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}
