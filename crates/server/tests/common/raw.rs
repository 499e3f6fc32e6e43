//! A hand-rolled WebSocket client over a plain `TcpStream`, for sending frames no
//! well-behaved client library would produce (bad opcodes, unmasked frames, RSV
//! bits, fragmented control frames) and for seeing exactly what the server sends
//! back, down to whether the TCP connection ends with or without a close frame.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Opcodes (RFC 6455 §5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The key of RFC 6455 §1.3's example handshake.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Any fixed mask will do: the server must unmask whatever key it is given.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame to send, built field by field. Defaults to FIN set, no RSV bits, masked.
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    /// RSV1..3 as the three bits below FIN (0b100 = RSV1).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            fin: true,
            rsv: 0,
            opcode,
            mask: Some(MASK),
            payload: payload.into(),
        }
    }

    pub fn text(s: &str) -> Frame {
        Frame::new(TEXT, s.as_bytes())
    }

    /// A close frame with `code` and `reason`.
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        Frame::new(CLOSE, payload)
    }

    pub fn fin(mut self, fin: bool) -> Frame {
        self.fin = fin;
        self
    }

    pub fn rsv(mut self, bits: u8) -> Frame {
        self.rsv = bits & 0b111;
        self
    }

    pub fn unmasked(mut self) -> Frame {
        self.mask = None;
        self
    }

    /// The frame on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push((u8::from(self.fin) << 7) | (self.rsv << 4) | (self.opcode & 0x0f));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.payload.len();
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        match self.mask {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(&self.payload),
        }
        out
    }
}

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Received {
    /// Code and reason of a close frame (1005 when it has no payload).
    pub fn close_code(&self) -> (u16, String) {
        assert_eq!(self.opcode, CLOSE, "not a close frame: {self:?}");
        match self.payload.as_slice() {
            [] => (1005, String::new()),
            [hi, lo, reason @ ..] => (
                u16::from_be_bytes([*hi, *lo]),
                String::from_utf8(reason.to_vec()).expect("close reason is UTF-8"),
            ),
            [_] => panic!("a close payload of one byte is malformed"),
        }
    }
}

/// How a read ended when no frame came.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The server closed the TCP connection (FIN or RST).
    Closed,
    /// Nothing arrived within the deadline.
    TimedOut,
}

/// One upgraded connection, read and written frame by frame.
pub struct RawWs {
    pub stream: TcpStream,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects to `path` and completes the opening handshake by hand.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        Self::connect_as(addr, "", path).await
    }

    /// Like [`RawWs::connect`], sending `token` as a bearer token (none when empty).
    pub async fn connect_as(addr: SocketAddr, token: &str, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        let auth = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: Bearer {token}\r\n")
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             {auth}Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send handshake");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(super::WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake response in time")
                .expect("read handshake response");
            assert!(n > 0, "server closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "expected 101 Switching Protocols, got:\n{head}"
        );
        let accept = derive_accept_key(KEY.as_bytes());
        assert!(
            head.lines().any(|l| {
                l.split_once(':')
                    .is_some_and(|(k, v)| k.eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept)
            }),
            "wrong or missing Sec-WebSocket-Accept:\n{head}"
        );
        buf.drain(..head_end);
        RawWs { stream, buf }
    }

    /// Writes bytes as they are. Errors are returned: a server that already
    /// failed the connection may have reset it.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    pub async fn send(&mut self, frame: &Frame) {
        self.send_bytes(&frame.encode()).await.expect("send frame");
    }

    /// Reads more bytes; `Ok(false)` at end of stream or reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = vec![0u8; 64 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Parses one complete frame from the buffer, if there is one.
    fn parse(&mut self) -> Option<Received> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let len = u64::from_be_bytes(b[2..10].try_into().ok()?);
                (usize::try_from(len).expect("frame length fits usize"), 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        let key = if masked {
            let key: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
            at += 4;
            Some(key)
        } else {
            None
        };
        if b.len() < at + len {
            return None;
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(key) = key {
            payload.iter_mut().enumerate().for_each(|(i, x)| *x ^= key[i % 4]);
        }
        let frame = Received {
            fin: b[0] & 0x80 != 0,
            rsv: (b[0] >> 4) & 0b111,
            opcode: b[0] & 0x0f,
            masked,
            payload,
        };
        self.buf.drain(..at + len);
        Some(frame)
    }

    /// The next frame, or how the stream ended.
    pub async fn next_frame(&mut self, within: Duration) -> Result<Received, Ended> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(frame) = self.parse() {
                return Ok(frame);
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(true) => {}
                Ok(false) => return Err(Ended::Closed),
                Err(_) => return Err(Ended::TimedOut),
            }
        }
    }

    /// Skips data frames, pings and pongs until the server's close frame; panics
    /// if the connection ends without one (a silent drop) or none comes in time.
    pub async fn expect_close(&mut self, within: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Ok(f) if f.opcode == CLOSE => {
                    assert!(!f.masked, "server frames must not be masked");
                    assert!(f.fin && f.rsv == 0, "malformed close frame: {f:?}");
                    return f.close_code();
                }
                Ok(_) => continue,
                Err(Ended::Closed) => {
                    panic!("the server dropped the TCP connection without a close frame")
                }
                Err(Ended::TimedOut) => panic!("no close frame within {within:?}"),
            }
        }
    }

    /// Asserts that the server closes the TCP connection within `within` and
    /// sends nothing more (RFC 6455 §5.5.1: no data after a close frame).
    pub async fn expect_tcp_close(&mut self, within: Duration) {
        match self.next_frame(within).await {
            Err(Ended::Closed) => {}
            Err(Ended::TimedOut) => {
                panic!("the server kept the TCP connection open for {within:?} after closing")
            }
            Ok(f) => panic!("frame after the close frame: {f:?}"),
        }
    }
}
