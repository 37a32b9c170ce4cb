//! Stock gRPC clients on a unix socket: their `:authority` made acceptable to h2.
//!
//! gRPC C-core (grpcio, grpc-ruby, …) sends the percent-encoded socket path as the HTTP/2
//! `:authority` of a `unix:` channel (`run%2Fkino%2Fagent.sock`) and grpc-java the bare path
//! (`/run/kino/agent.sock`). Neither is an RFC 3986 authority, and h2 (under hyper and tonic)
//! resets every such stream with `PROTOCOL_ERROR` while decoding its headers, before any
//! layer of ours runs. grpc-go and tonic send `localhost`, which is what the authority of a
//! local socket means anyway: the path already names the peer.
//!
//! So, on unix-socket connections only, the bytes the client sends pass through
//! [`UnixAuthority`] before h2 reads them: every header block (HEADERS and its CONTINUATION
//! frames) is HPACK-decoded with the client's compression state, an `:authority` that is not a
//! valid authority becomes `localhost`, and the block is re-encoded as literals without
//! indexing (so h2's dynamic table stays empty and never disagrees with what the client
//! indexed). Every other frame, and everything the server writes, passes untouched. A
//! malformed header block ends the connection, as h2 itself would.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What a unix-socket peer's invalid `:authority` becomes.
pub const UNIX_AUTHORITY: &str = "localhost";

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header size.
const FRAME_HEADER: usize = 9;
/// The largest frame payload any HTTP/2 peer must accept (SETTINGS_MAX_FRAME_SIZE's initial
/// value); re-encoded blocks are cut into frames of this size.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// h2 advertises no SETTINGS_HEADER_TABLE_SIZE, so a client may use the protocol's initial
/// 4096 bytes of dynamic table and no more.
const HPACK_TABLE_SIZE: usize = 4096;
/// Largest header block accepted (h2 would refuse it too): bounds what is buffered.
const MAX_HEADER_BLOCK: usize = 1 << 20;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// A unix-socket connection whose inbound header blocks get a valid `:authority`.
pub struct UnixAuthority<S> {
    inner: S,
    rewriter: Rewriter,
}

impl<S> UnixAuthority<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        UnixAuthority {
            inner,
            rewriter: Rewriter::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for UnixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.rewriter.ready.is_empty() {
                let n = this.rewriter.ready.len().min(buf.remaining());
                buf.put_slice(&this.rewriter.ready[..n]);
                this.rewriter.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.rewriter.finish(),
                Poll::Ready(Ok(())) => this.rewriter.push(read.filled())?,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for UnixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for UnixAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A header block being received: HEADERS then CONTINUATION frames up to END_HEADERS.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: BytesMut,
}

/// The byte-level work, apart from the I/O: complete frames in, rewritten frames out.
struct Rewriter {
    /// Bytes read from the client that do not yet make a complete frame.
    received: BytesMut,
    /// Bytes for h2 to read.
    ready: BytesMut,
    preface_seen: bool,
    eof: bool,
    block: Option<PendingBlock>,
    decoder: loona_hpack::Decoder<'static>,
}

fn invalid(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

impl Rewriter {
    fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE_SIZE);
        Rewriter {
            received: BytesMut::new(),
            ready: BytesMut::new(),
            preface_seen: false,
            eof: false,
            block: None,
            decoder,
        }
    }

    /// The client closed its side: whatever is left goes to h2 as it is (h2 reports a
    /// truncated frame itself).
    fn finish(&mut self) {
        self.eof = true;
        let rest = self.received.split();
        self.ready.extend_from_slice(&rest);
    }

    fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.received.extend_from_slice(bytes);
        if !self.preface_seen {
            if self.received.len() < PREFACE.len() {
                return Ok(());
            }
            // Not HTTP/2 with prior knowledge: h2 refuses it; stay out of the way.
            let preface = self.received.split_to(PREFACE.len());
            self.ready.extend_from_slice(&preface);
            self.preface_seen = true;
        }
        while self.received.len() >= FRAME_HEADER {
            let length =
                u32::from_be_bytes([0, self.received[0], self.received[1], self.received[2]])
                    as usize;
            if self.received.len() < FRAME_HEADER + length {
                break;
            }
            let frame = self.received.split_to(FRAME_HEADER + length);
            self.frame(&frame)?;
        }
        Ok(())
    }

    fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        match kind {
            TYPE_HEADERS => {
                if self.block.is_some() {
                    return Err(invalid("HEADERS inside another header block".into()));
                }
                let mut rest = payload;
                let mut padding = 0usize;
                if flags & FLAG_PADDED != 0 {
                    let (&pad, tail) = rest
                        .split_first()
                        .ok_or_else(|| invalid("HEADERS without its pad length".into()))?;
                    padding = pad as usize;
                    rest = tail;
                }
                let priority = if flags & FLAG_PRIORITY != 0 {
                    let (head, tail) = rest
                        .split_at_checked(5)
                        .ok_or_else(|| invalid("HEADERS without its priority".into()))?;
                    rest = tail;
                    Some(<[u8; 5]>::try_from(head).expect("five bytes"))
                } else {
                    None
                };
                let fragment = rest
                    .get(..rest.len().wrapping_sub(padding))
                    .filter(|_| padding <= rest.len())
                    .ok_or_else(|| invalid("HEADERS padding longer than the frame".into()))?;
                self.block = Some(PendingBlock {
                    stream_id,
                    end_stream: flags & FLAG_END_STREAM != 0,
                    priority,
                    fragment: BytesMut::from(fragment),
                });
            }
            TYPE_CONTINUATION => {
                let block = self
                    .block
                    .as_mut()
                    .filter(|b| b.stream_id == stream_id)
                    .ok_or_else(|| invalid("CONTINUATION outside a header block".into()))?;
                if block.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(invalid(format!(
                        "header block larger than {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                block.fragment.extend_from_slice(payload);
            }
            _ => {
                if self.block.is_some() {
                    return Err(invalid(format!("frame type {kind} inside a header block")));
                }
                self.ready.extend_from_slice(frame);
                return Ok(());
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            let block = self.block.take().expect("a block is pending");
            self.rewrite(block)?;
        }
        Ok(())
    }

    /// Decodes a complete block with the client's HPACK state and writes it out again as
    /// HEADERS (+ CONTINUATION) frames of literals, with a valid `:authority`.
    fn rewrite(&mut self, block: PendingBlock) -> io::Result<()> {
        let headers = self
            .decoder
            .decode(&block.fragment)
            .map_err(|e| invalid(format!("undecodable header block: {e}")))?;
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        for (name, value) in &headers {
            let value: &[u8] = if name.as_slice() == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                UNIX_AUTHORITY.as_bytes()
            } else {
                value
            };
            encode_literal(&mut encoded, name, value);
        }
        let mut chunks = encoded.chunks(MAX_FRAME_PAYLOAD - 5).peekable();
        let first = chunks.next().unwrap_or_default();
        let mut flags = 0u8;
        if block.end_stream {
            flags |= FLAG_END_STREAM;
        }
        if block.priority.is_some() {
            flags |= FLAG_PRIORITY;
        }
        if chunks.peek().is_none() {
            flags |= FLAG_END_HEADERS;
        }
        let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
        self.frame_header(
            priority.len() + first.len(),
            TYPE_HEADERS,
            flags,
            block.stream_id,
        );
        self.ready.extend_from_slice(priority);
        self.ready.extend_from_slice(first);
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                FLAG_END_HEADERS
            } else {
                0
            };
            self.frame_header(chunk.len(), TYPE_CONTINUATION, flags, block.stream_id);
            self.ready.extend_from_slice(chunk);
        }
        Ok(())
    }

    fn frame_header(&mut self, length: usize, kind: u8, flags: u8, stream_id: u32) {
        self.ready.put_uint(length as u64, 3);
        self.ready.put_u8(kind);
        self.ready.put_u8(flags);
        self.ready.put_u32(stream_id);
    }
}

/// A literal header field without indexing, new name (RFC 7541 §6.2.2), both strings raw.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        loona_hpack::encoder::encode_integer_into(string.len(), 7, 0x00, out)
            .expect("writing to a Vec does not fail");
        out.extend_from_slice(string);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw literal with incremental indexing and a static name (what C-core sends for
    /// `:authority`, name index 1), then an indexed reference to the entry it made.
    fn block_with_authority(authority: &[u8]) -> Vec<u8> {
        let mut out = vec![0x82, 0x86, 0x41]; // :method GET, :scheme http, :authority (indexed name 1)
        loona_hpack::encoder::encode_integer_into(authority.len(), 7, 0, &mut out).unwrap();
        out.extend_from_slice(authority);
        out.push(0x84); // :path /
        out
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn decode_frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            frames.push((bytes[3], bytes[4], stream, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        frames
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_and_indexed_references_follow_it() {
        let mut rewriter = Rewriter::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &block_with_authority(b"run%2Fkino%2Fagent.sock"),
        ));
        // The second request names the dynamic entry the first one inserted (index 62).
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &[0x82, 0x86, 0xbe, 0x84],
        ));
        // Fed in small pieces, as a socket may deliver them.
        for piece in input.chunks(7) {
            rewriter.push(piece).unwrap();
        }
        assert_eq!(&rewriter.ready[..PREFACE.len()], PREFACE);
        let frames = decode_frames(&rewriter.ready[PREFACE.len()..]);
        assert_eq!(frames.len(), 3, "{frames:?}");
        assert_eq!(frames[0].0, 0x4);
        let mut h2_side = loona_hpack::Decoder::new();
        for (i, stream, flags) in [
            (1, 1, FLAG_END_HEADERS),
            (2, 3, FLAG_END_HEADERS | FLAG_END_STREAM),
        ] {
            let (kind, got_flags, got_stream, payload) = &frames[i];
            assert_eq!(
                (*kind, *got_flags, *got_stream),
                (TYPE_HEADERS, flags, stream)
            );
            let headers = h2_side.decode(payload).unwrap();
            let authority: Vec<&[u8]> = headers
                .iter()
                .filter(|(n, _)| n == b":authority")
                .map(|(_, v)| v.as_slice())
                .collect();
            assert_eq!(authority, [b"localhost".as_slice()], "stream {stream}");
            assert!(headers.iter().any(|(n, v)| n == b":path" && v == b"/"));
        }
    }

    #[test]
    fn valid_authorities_stay_and_long_blocks_split_into_continuations() {
        let mut rewriter = Rewriter::new();
        let mut block = block_with_authority(b"localhost:7401");
        // A 40 000-byte header value: more than two frames' worth.
        block.extend([0x00, 0x01, b'x']);
        loona_hpack::encoder::encode_integer_into(40_000, 7, 0, &mut block).unwrap();
        block.extend(std::iter::repeat_n(b'v', 40_000));
        let mut input = PREFACE.to_vec();
        // Split by the client into HEADERS (padded, with priority) + CONTINUATION.
        let mut first = vec![2u8]; // pad length
        first.extend([0, 0, 0, 0, 16]); // priority
        first.extend(&block[..100]);
        first.extend([0, 0]);
        input.extend(frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 5, &first));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, &block[100..]));
        rewriter.push(&input).unwrap();
        let frames = decode_frames(&rewriter.ready[PREFACE.len()..]);
        assert!(frames.len() >= 3, "{}", frames.len());
        assert_eq!(frames[0].1, FLAG_PRIORITY);
        assert_eq!(&frames[0].3[..5], &[0, 0, 0, 0, 16]);
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME_PAYLOAD));
        assert_eq!(frames.last().unwrap().1, FLAG_END_HEADERS);
        let mut joined = frames[0].3[5..].to_vec();
        for f in &frames[1..] {
            assert_eq!((f.0, f.2), (TYPE_CONTINUATION, 5));
            joined.extend(&f.3);
        }
        let headers = loona_hpack::Decoder::new().decode(&joined).unwrap();
        assert!(headers.contains(&(b":authority".to_vec(), b"localhost:7401".to_vec())));
        assert!(headers.iter().any(|(n, v)| n == b"x" && v.len() == 40_000));
    }

    #[test]
    fn garbage_in_a_header_block_ends_the_connection() {
        let mut rewriter = Rewriter::new();
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0x0f],
        ));
        let error = rewriter
            .push(&input)
            .expect_err("an index far out of bounds");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
