//! Server-side WebSocket framing for the write path, and the read-side adapter.
//!
//! Server frames are never masked, so a frame is the same bytes for every client:
//! an event is framed once at publish time and every subscriber's writer sends
//! that one shared buffer with vectored I/O — no per-client copy and no
//! per-client write buffer left allocated after a burst (with tungstenite's own
//! write path, 19,000 clients kept ~50 KiB each after one burst). tungstenite
//! still parses everything the peer sends; what it wants to write on its own
//! (pong and close replies) goes through [`ReaderIo`] into the outbox, so the
//! writer task stays the only code that touches the socket's write half.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf};

use super::session::Session;

/// Frame opcodes we send.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OpCode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
}

/// An unmasked, unfragmented frame: FIN + opcode, length, payload.
pub(crate) fn frame(op: OpCode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(0x80 | op as u8);
    match payload.len() {
        n @ 0..=125 => out.put_u8(n as u8),
        n @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A text frame.
pub(crate) fn text(payload: &str) -> Bytes {
    frame(OpCode::Text, payload.as_bytes())
}

/// A close frame with a code and a reason (the caller keeps it ≤ 123 bytes).
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    frame(OpCode::Close, &payload)
}

/// An empty ping frame.
pub(crate) fn ping() -> Bytes {
    Bytes::from_static(&[0x80 | OpCode::Ping as u8, 0])
}

/// Most slices handed to one `writev` (Linux allows 1024).
const MAX_IOV: usize = 64;

/// Writes every buffer, in order, with as few syscalls as the kernel allows;
/// `progress` runs after every write that moved bytes (the stall detector's clock).
pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut [Bytes],
    progress: impl Fn(),
) -> std::io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<IoSlice<'_>> = bufs[first..].iter().take(MAX_IOV).map(|b| IoSlice::new(b)).collect();
        let mut written = w.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        progress();
        while first < bufs.len() && written >= bufs[first].len() {
            written -= bufs[first].len();
            first += 1;
        }
        if written > 0 {
            // A partial write inside one buffer: keep its unwritten tail.
            let rest = bufs[first].slice(written..);
            bufs[first] = rest;
        }
    }
    w.flush().await
}

/// Whether a run of whole unmasked frames (as tungstenite writes them) holds a close frame.
fn contains_close(mut buf: &[u8]) -> bool {
    while buf.len() >= 2 {
        if buf[0] & 0x0f == OpCode::Close as u8 {
            return true;
        }
        let (header, len): (usize, usize) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
            127 if buf.len() >= 10 => (
                10,
                u64::from_be_bytes(buf[2..10].try_into().unwrap_or([0xff; 8])) as usize,
            ),
            n @ 0..=125 => (2, n as usize),
            _ => return false,
        };
        buf = buf.get(header.saturating_add(len)..).unwrap_or(&[]);
    }
    false
}

/// The I/O tungstenite reads through: reads come from the socket's read half;
/// writes (its automatic pong and close replies) are queued in the session's
/// outbox for the writer task. Writes never block and are always whole frames,
/// because tungstenite hands over its complete buffer in one call.
pub(crate) struct ReaderIo<R> {
    pub(crate) read: ReadHalf<R>,
    pub(crate) session: Arc<Session>,
}

impl<R: AsyncRead + AsyncWrite> AsyncRead for ReaderIo<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R: AsyncRead + AsyncWrite> AsyncWrite for ReaderIo<R> {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let bytes = Bytes::copy_from_slice(buf);
        if contains_close(buf) {
            self.session.with_outbox(|o| o.peer_close_reply(bytes));
        } else {
            self.session.with_outbox(|o| o.push_control(bytes));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers() {
        assert_eq!(&text("hi")[..], &[0x81, 2, b'h', b'i']);
        let f = frame(OpCode::Binary, &[0u8; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        let f = frame(OpCode::Text, &vec![b'a'; 70_000]);
        assert_eq!(&f[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(f[2..10].try_into().unwrap()), 70_000);
        assert_eq!(&close(1001, "bye")[..], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        assert_eq!(&ping()[..], &[0x89, 0]);
    }

    #[test]
    fn finds_close_frames_in_a_run() {
        assert!(contains_close(&close(1000, "")));
        let mut run = frame(OpCode::Text, b"pong-ish").to_vec();
        assert!(!contains_close(&run));
        run.extend_from_slice(&close(1000, ""));
        assert!(contains_close(&run));
        assert!(!contains_close(&frame(OpCode::Binary, &[8u8; 300])));
    }

    #[tokio::test]
    async fn write_all_handles_partial_writes() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let mut bufs: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("frame-{i:02};"))).collect();
        let expected: Vec<u8> = bufs.iter().flat_map(|b| b.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got).await.unwrap();
            got
        });
        write_all(&mut a, &mut bufs, || {}).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
