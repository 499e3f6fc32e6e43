//! The bench subscriber's own minimal WebSocket client: handshake, frame parsing,
//! pong and close replies, and nothing else.
//!
//! The bench shares two cores with the server it measures, so what it spends per
//! delivery is taken from the server. A profile of 19,000 tokio-tungstenite clients
//! during fan-out showed 57 % of the bench in user space: zeroing the read buffer on
//! every read, the compat layer's waker registration on every poll, message
//! allocation. Here each client reads straight into one `BytesMut`, parses the
//! server's unmasked frames in place and hands text payloads to the scanner.
//! Setup (welcome, subscribe replies) goes through the same parser.

use std::io;

use anyhow::{Context, Result, anyhow, bail};
use bytes::{Buf, BytesMut};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::client::{CloseInfo, ConnectOptions, Target, tcp_connect};

/// Largest response head accepted from the upgrade.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message accepted (the server's frames are far smaller).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Read buffer reserved per read: small so 19,000 idle clients stay cheap.
const READ_CHUNK: usize = 4096;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What the server sent, as the bench needs it.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A complete text message; [`Incoming::text`] checks its UTF-8.
    Text(BytesMut),
    /// The server's close (already answered).
    Close(CloseInfo),
}

/// One client connection.
pub(crate) struct RawWs {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buf: BytesMut,
    /// A fragmented message being reassembled: its opcode and payload so far.
    partial: Option<(u8, BytesMut)>,
    /// Our close frame went out: the server's is the reply, not to be echoed.
    close_sent: bool,
}

impl Incoming {
    /// The text of a `Text`.
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Incoming::Text(bytes) => std::str::from_utf8(bytes).ok(),
            Incoming::Close(_) => None,
        }
    }
}

impl RawWs {
    /// TCP connect (with the bench's socket options) and the HTTP upgrade.
    pub(crate) async fn connect(target: &Target, opts: &ConnectOptions) -> Result<RawWs> {
        let (read, write) = tcp_connect(target, opts).await?.into_split();
        let mut ws = RawWs {
            read,
            write,
            buf: BytesMut::with_capacity(READ_CHUNK),
            partial: None,
            close_sent: false,
        };
        ws.upgrade(target, opts.token.as_deref())
            .await
            .context("WebSocket handshake")?;
        Ok(ws)
    }

    async fn upgrade(&mut self, target: &Target, token: Option<&str>) -> Result<()> {
        let url = &target.url;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => bail!("{url}: no host"),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let key = generate_key();
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        );
        if let Some(token) = token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        request.push_str("\r\n");
        self.write.write_all(request.as_bytes()).await?;

        let head_end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.buf.len() > MAX_HEAD {
                bail!("upgrade response head over {MAX_HEAD} bytes");
            }
            if self.fill().await? == 0 {
                bail!("connection closed during the upgrade");
            }
        };
        let head = self.buf.split_to(head_end);
        let head = std::str::from_utf8(&head).map_err(|_| anyhow!("upgrade response is not text"))?;
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        let code = status.split_whitespace().nth(1).unwrap_or_default();
        if code != "101" {
            bail!("HTTP error: {}", status.trim_start_matches("HTTP/1.1 "));
        }
        let accept = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.trim().to_owned());
        if accept.as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
            bail!("the server's Sec-WebSocket-Accept does not match the key");
        }
        Ok(())
    }

    /// Reads more bytes into the buffer; 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        self.read.read_buf(&mut self.buf).await
    }

    /// The next text message or close, answering pings on the way. `None` when the
    /// connection ended without a close frame.
    pub(crate) async fn next(&mut self) -> Result<Option<Incoming>> {
        loop {
            while let Some(frame) = self.parse_frame()? {
                if let Some(incoming) = self.on_frame(frame).await? {
                    return Ok(Some(incoming));
                }
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Takes one whole frame off the buffer: (fin, opcode, payload).
    fn parse_frame(&mut self) -> Result<Option<(bool, u8, BytesMut)>> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (fin, opcode) = (b[0] & 0x80 != 0, b[0] & 0x0F);
        if b[0] & 0x70 != 0 {
            bail!("frame with reserved bits set");
        }
        if b[1] & 0x80 != 0 {
            bail!("masked frame from the server");
        }
        let (len, head) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().map_err(|_| anyhow!("frame length"))?),
                10,
            ),
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).ok().filter(|&l| l <= MAX_MESSAGE);
        let Some(len) = len else {
            bail!("frame larger than {MAX_MESSAGE} bytes");
        };
        if self.buf.len() < head + len {
            self.buf.reserve(head + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(head);
        Ok(Some((fin, opcode, self.buf.split_to(len))))
    }

    async fn on_frame(&mut self, (fin, opcode, payload): (bool, u8, BytesMut)) -> Result<Option<Incoming>> {
        match opcode {
            OP_PING => {
                self.send(OP_PONG, &payload).await?;
                Ok(None)
            }
            OP_PONG => Ok(None),
            OP_CLOSE => {
                let info = if payload.len() >= 2 {
                    CloseInfo {
                        code: Some(u16::from_be_bytes([payload[0], payload[1]])),
                        reason: String::from_utf8_lossy(&payload[2..]).into_owned(),
                    }
                } else {
                    CloseInfo {
                        code: None,
                        reason: String::new(),
                    }
                };
                // Echo the code, as RFC 6455 asks; the server may already be gone.
                if !self.close_sent {
                    self.close_sent = true;
                    let _ = self.send(OP_CLOSE, &payload[..payload.len().min(2)]).await;
                }
                Ok(Some(Incoming::Close(info)))
            }
            OP_TEXT | OP_BINARY if fin && self.partial.is_none() => Ok(text(opcode, payload)?),
            OP_TEXT | OP_BINARY if self.partial.is_none() => {
                self.partial = Some((opcode, payload));
                Ok(None)
            }
            OP_CONTINUATION => {
                let Some((first, mut data)) = self.partial.take() else {
                    bail!("continuation frame without a message");
                };
                if data.len() + payload.len() > MAX_MESSAGE {
                    bail!("message larger than {MAX_MESSAGE} bytes");
                }
                data.extend_from_slice(&payload);
                if fin {
                    Ok(text(first, data)?)
                } else {
                    self.partial = Some((first, data));
                    Ok(None)
                }
            }
            other => bail!("unexpected frame opcode {other:#x}"),
        }
    }

    /// Sends one masked frame (clients must mask).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut mask = [0u8; 4];
        rand::rng().fill_bytes(&mut mask);
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.write.write_all(&frame).await
    }

    /// Sends a text message.
    pub(crate) async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(OP_TEXT, text.as_bytes()).await
    }

    /// Sends a normal close (1000) and waits briefly for the server's, so the
    /// server sees a clean end of the run rather than a reset.
    pub(crate) async fn close(&mut self) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        if self.send(OP_CLOSE, &1000u16.to_be_bytes()).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            while let Ok(Some(incoming)) = self.next().await {
                if matches!(incoming, Incoming::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// A complete data message; binary is never sent by the server to the bench.
fn text(opcode: u8, data: BytesMut) -> Result<Option<Incoming>> {
    if opcode != OP_TEXT {
        bail!("binary message from the server");
    }
    // UTF-8 is checked once, by the reader's `Incoming::text`.
    Ok(Some(Incoming::Text(data)))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A hand-rolled server: answers the upgrade, then sends a fragmented text
    /// message, a ping and a close, and returns what the client wrote back.
    async fn serve_once(listener: TcpListener) -> Vec<u8> {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            s.read_exact(&mut byte).await.expect("request");
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).expect("head");
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("key");
        assert!(head.contains("Authorization: Bearer tok\r\n"), "{head}");
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        let mut out = response.into_bytes();
        out.extend_from_slice(&[0x01, 3]);
        out.extend_from_slice(b"hel");
        out.extend_from_slice(&[0x89, 2, b'p', b'!']);
        out.extend_from_slice(&[0x80, 2]);
        out.extend_from_slice(b"lo");
        out.extend_from_slice(&[0x88, 6, 0x0F, 0xA8]);
        out.extend_from_slice(b"slow");
        s.write_all(&out).await.expect("frames");
        let mut back = vec![0u8; 8 + 8];
        s.read_exact(&mut back).await.expect("pong and close");
        back
    }

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
        let len = usize::from(frame[1] & 0x7F);
        let mask = &frame[2..6];
        let payload = frame[6..6 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        (frame[0], payload)
    }

    #[tokio::test]
    async fn reassembles_fragments_answers_pings_and_reports_the_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve_once(listener));
        let url: url::Url = format!("ws://{addr}/ws").parse().expect("url");
        let target = Target { url, addr, tls: None };
        let opts = ConnectOptions::new(Some("tok".into()));
        let mut ws = RawWs::connect(&target, &opts).await.expect("connect");

        let first = ws.next().await.expect("read").expect("message");
        assert_eq!(first.text(), Some("hello"));
        match ws.next().await.expect("read").expect("close") {
            Incoming::Close(info) => {
                assert_eq!(info.code, Some(4008));
                assert_eq!(info.reason, "slow");
            }
            other => panic!("expected the close, got {other:?}"),
        }

        let back = server.await.expect("server");
        assert_eq!(
            unmask(&back[..8]),
            (0x8A, b"p!".to_vec()),
            "pong with the ping's payload"
        );
        assert_eq!(unmask(&back[8..]), (0x88, vec![0x0F, 0xA8]), "close echoing the code");
    }
}
