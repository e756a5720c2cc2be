//! The request-response codec of Formic's point-to-point protocols.
//!
//! libp2p's stock CBOR codec decodes with its own rules and turns any bad
//! input into an opaque I/O error. This one reads a bounded number of bytes
//! and hands them to the protocol crate's canonical, typed decoder, and it
//! delivers a malformed or oversized *request* to the swarm task as an
//! `Err(DecodeError)` instead of failing the stream, so the task can answer
//! it, log the cause and penalize the sender.

use std::io;
use std::marker::PhantomData;

use formic_protocol::DecodeError;
use formic_protocol::blob_transfer::{
    BlobRequest, BlobResponse, MAX_BLOB_REQUEST_BYTES, MAX_BLOB_RESPONSE_BYTES,
};
use formic_protocol::sync::{
    MAX_SYNC_REQUEST_BYTES, MAX_SYNC_RESPONSE_BYTES, SyncRequest, SyncResponse,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// A message type of one of our request-response protocols.
pub trait WireMessage: Send + Sized + 'static {
    /// Largest encoded message accepted.
    const MAX_BYTES: usize;
    fn encode(&self) -> Result<Vec<u8>, formic_protocol::EncodeError>;
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

macro_rules! wire_message {
    ($ty:ty, $max:expr) => {
        impl WireMessage for $ty {
            const MAX_BYTES: usize = $max;
            fn encode(&self) -> Result<Vec<u8>, formic_protocol::EncodeError> {
                self.to_bytes()
            }
            fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                Self::from_bytes(bytes)
            }
        }
    };
}

wire_message!(BlobRequest, MAX_BLOB_REQUEST_BYTES);
wire_message!(BlobResponse, MAX_BLOB_RESPONSE_BYTES);
wire_message!(SyncRequest, MAX_SYNC_REQUEST_BYTES);
wire_message!(SyncResponse, MAX_SYNC_RESPONSE_BYTES);

/// Codec for requests `Req` answered by `Resp`. Inbound messages are
/// `Result`s so a bad one reaches the swarm task with its typed cause.
pub struct WireCodec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

// By hand: a derive would demand `Req: Debug, Resp: Debug` for a codec that
// holds neither.
impl<Req, Resp> std::fmt::Debug for WireCodec<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCodec")
    }
}

impl<Req, Resp> Default for WireCodec<Req, Resp> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req, Resp> Clone for WireCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// Reads the whole stream, at most `max` bytes; more is reported as
/// `TooLarge` without reading it.
async fn read_bounded<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Result<Vec<u8>, DecodeError>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Ok(Err(DecodeError::TooLarge {
            len: buf.len(),
            max,
        }));
    }
    Ok(Ok(buf))
}

async fn write_message<T, M>(io: &mut T, msg: Result<M, DecodeError>) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
    M: WireMessage,
{
    let msg = msg.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let bytes = msg
        .encode()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl<Req: WireMessage, Resp: WireMessage> libp2p::request_response::Codec for WireCodec<Req, Resp> {
    type Protocol = StreamProtocol;
    type Request = Result<Req, DecodeError>;
    type Response = Result<Resp, DecodeError>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Self::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(read_bounded(io, Req::MAX_BYTES)
            .await?
            .and_then(|b| Req::decode(&b)))
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Self::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_bounded(io, Resp::MAX_BYTES).await?;
        // A peer that closes the stream without a byte did not answer (it
        // dropped the request, or shut down): a failed request, not a
        // malformed response.
        if bytes.as_ref().is_ok_and(|b| b.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the stream without answering",
            ));
        }
        Ok(bytes.and_then(|b| Resp::decode(&b)))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Self::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Self::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_message(io, res).await
    }
}

/// Codec of the blob exchange.
pub type BlobCodec = WireCodec<BlobRequest, BlobResponse>;
/// Codec of pull-sync.
pub type SyncCodec = WireCodec<SyncRequest, SyncResponse>;
