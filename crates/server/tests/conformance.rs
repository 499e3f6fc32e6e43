//! RFC 6455 protocol violations on `/ws`, sent as hand-built frames over a raw
//! socket. Each must be answered with a close frame carrying the right code and
//! then the end of the TCP connection — never a silent drop, which a client
//! cannot tell from a network failure and so would retry in a loop.
mod common;

use common::raw::{BINARY, CONTINUATION, Frame, PING, RawWs, TEXT};
use common::{TestServer, WAIT};

/// Sends `frames` on a fresh `/ws` connection; returns the server's close code
/// and reason after checking that the server then closes the TCP connection.
async fn close_after(srv: &TestServer, frames: &[Frame]) -> (u16, String) {
    let mut ws = RawWs::connect_as(srv.addr, &srv.token, "/ws").await;
    for f in frames {
        // A server that failed the connection early may reset it under a later frame.
        let _ = ws.send_bytes(&f.encode()).await;
    }
    let close = ws.expect_close(WAIT).await;
    ws.expect_tcp_close(WAIT).await;
    close
}

async fn assert_closes_with(srv: &TestServer, frames: &[Frame], want: u16) -> String {
    let (code, reason) = close_after(srv, frames).await;
    assert_eq!(code, want, "close code for {frames:?} (reason {reason:?})");
    reason
}

#[tokio::test]
async fn reserved_opcodes_close_with_1002() {
    let srv = TestServer::spawn().await;
    // 0x3-0x7 are reserved data opcodes, 0xB-0xF reserved control opcodes.
    for opcode in [0x3, 0x7, 0xB, 0xF] {
        assert_closes_with(&srv, &[Frame::new(opcode, "x")], 1002).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_with_1002() {
    let srv = TestServer::spawn().await;
    let frame = Frame::text(r#"{"type":"ping"}"#).unmasked();
    assert_closes_with(&srv, &[frame], 1002).await;
    srv.stop().await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let srv = TestServer::spawn().await;
    // "κόσμε" cut inside a code point, and a lone 0xFF.
    assert_closes_with(&srv, &[Frame::new(TEXT, [0xce, 0xba, 0xe1, 0xbd])], 1007).await;
    assert_closes_with(&srv, &[Frame::new(TEXT, [b'{', 0xff, b'}'])], 1007).await;
    // Invalid only once the fragments are joined.
    let split = [Frame::new(TEXT, [0xce]).fin(false), Frame::new(CONTINUATION, [0x41])];
    assert_closes_with(&srv, &split, 1007).await;
    srv.stop().await;
}

#[tokio::test]
async fn oversize_message_closes_with_1009() {
    let srv = TestServer::spawn_with(|c| c.ws_max_message = 1024).await;
    let big = vec![b'a'; 2048];
    assert_closes_with(&srv, &[Frame::new(TEXT, big)], 1009).await;
    // Each fragment fits, the message does not.
    let half = vec![b'a'; 700];
    let fragments = [
        Frame::new(TEXT, half.clone()).fin(false),
        Frame::new(CONTINUATION, half),
    ];
    assert_closes_with(&srv, &fragments, 1009).await;
    srv.stop().await;
}

#[tokio::test]
async fn message_at_the_limit_is_not_closed() {
    let srv = TestServer::spawn_with(|c| c.ws_max_message = 1024).await;
    let mut ws = RawWs::connect_as(srv.addr, &srv.token, "/ws").await;
    // Exactly 1024 bytes of valid JSON that is not a command: an error reply, no close.
    let pad = "a".repeat(1024 - r#"{"type":"ping","id":""}"#.len());
    let msg = format!(r#"{{"type":"ping","id":"{pad}"}}"#);
    assert_eq!(msg.len(), 1024);
    ws.send(&Frame::text(&msg)).await;
    loop {
        let f = ws.next_frame(WAIT).await.expect("a reply, not the end");
        assert_ne!(f.opcode, common::raw::CLOSE, "closed: {:?}", f.close_code());
        if f.opcode == TEXT && String::from_utf8_lossy(&f.payload).contains(r#""type":"pong""#) {
            break;
        }
    }
    ws.send(&Frame::close(1000, "")).await;
    assert_eq!(ws.expect_close(WAIT).await.0, 1000);
    srv.stop().await;
}

#[tokio::test]
async fn fragmented_control_frame_closes_with_1002() {
    let srv = TestServer::spawn().await;
    assert_closes_with(&srv, &[Frame::new(PING, "hi").fin(false)], 1002).await;
    srv.stop().await;
}

#[tokio::test]
async fn control_frame_over_125_bytes_closes_with_1002() {
    let srv = TestServer::spawn().await;
    assert_closes_with(&srv, &[Frame::new(PING, vec![b'p'; 126])], 1002).await;
    srv.stop().await;
}

#[tokio::test]
async fn invalid_close_codes_close_with_1002() {
    let srv = TestServer::spawn().await;
    // 1005/1006/1015 must never be sent; 0-999 are unused; 1004 is reserved.
    for code in [999, 1004, 1005, 1006, 1015, 0] {
        assert_closes_with(&srv, &[Frame::close(code, "")], 1002).await;
    }
    // A one-byte close payload cannot hold a code.
    assert_closes_with(&srv, &[Frame::new(common::raw::CLOSE, [0x03])], 1002).await;
    srv.stop().await;
}

#[tokio::test]
async fn reserved_bits_close_with_1002() {
    let srv = TestServer::spawn().await;
    for bits in [0b100, 0b010, 0b001] {
        let frame = Frame::text(r#"{"type":"ping"}"#).rsv(bits);
        assert_closes_with(&srv, &[frame], 1002).await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn continuation_without_a_start_closes_with_1002() {
    let srv = TestServer::spawn().await;
    assert_closes_with(&srv, &[Frame::new(CONTINUATION, "x")], 1002).await;
    let interleaved = [Frame::new(TEXT, "a").fin(false), Frame::new(TEXT, "b")];
    assert_closes_with(&srv, &interleaved, 1002).await;
    srv.stop().await;
}

#[tokio::test]
async fn binary_frame_closes_with_1003() {
    let srv = TestServer::spawn().await;
    let reason = assert_closes_with(&srv, &[Frame::new(BINARY, [1, 2, 3])], 1003).await;
    assert!(reason.contains("binary"), "reason should say why: {reason:?}");
    srv.stop().await;
}

#[tokio::test]
async fn client_close_is_echoed_and_the_server_closes_tcp() {
    let srv = TestServer::spawn().await;
    for (code, reason) in [(1000, "bye"), (1001, ""), (3000, "app"), (4999, "")] {
        let (got, _) = close_after(&srv, &[Frame::close(code, reason)]).await;
        assert_eq!(got, code, "the server echoes the client's close code");
    }
    srv.stop().await;
}

#[tokio::test]
async fn pings_are_answered_before_the_close() {
    let srv = TestServer::spawn().await;
    let mut ws = RawWs::connect_as(srv.addr, &srv.token, "/ws").await;
    ws.send(&Frame::new(PING, "abc")).await;
    loop {
        let f = ws.next_frame(WAIT).await.expect("pong");
        if f.opcode == common::raw::PONG {
            assert_eq!(f.payload, b"abc");
            break;
        }
    }
    ws.send(&Frame::close(1000, "")).await;
    assert_eq!(ws.expect_close(WAIT).await.0, 1000);
    ws.expect_tcp_close(WAIT).await;
    srv.stop().await;
}

#[tokio::test]
async fn echo_endpoint_exists_only_when_enabled() {
    let srv = TestServer::spawn().await;
    let status = srv
        .http
        .get(srv.url("/ws/echo"))
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status, 404);
    srv.stop().await;

    let srv = TestServer::spawn_with(|c| c.ws_echo = true).await;
    let mut ws = RawWs::connect_as(srv.addr, &srv.token, "/ws/echo").await;
    ws.send(&Frame::text("héllo")).await;
    let f = ws.next_frame(WAIT).await.expect("echo");
    assert_eq!((f.opcode, f.payload.as_slice()), (TEXT, "héllo".as_bytes()));
    ws.send(&Frame::new(BINARY, [0, 255])).await;
    let f = ws.next_frame(WAIT).await.expect("echo");
    assert_eq!((f.opcode, f.payload.as_slice()), (BINARY, &[0u8, 255][..]));
    ws.send(&Frame::close(1000, "")).await;
    assert_eq!(ws.expect_close(WAIT).await.0, 1000);
    ws.expect_tcp_close(WAIT).await;
    srv.stop().await;
}

#[tokio::test]
async fn close_right_after_a_request_still_gets_a_close_reply() {
    let srv = TestServer::spawn_with(|c| c.ws_echo = true).await;
    for path in ["/ws", "/ws/echo"] {
        for _ in 0..20 {
            let mut ws = RawWs::connect_as(srv.addr, &srv.token, path).await;
            // One write: the server reads the request and the close together.
            let mut bytes = Frame::text(r#"{"type":"ping"}"#).encode();
            bytes.extend(Frame::close(1000, "done").encode());
            ws.send_bytes(&bytes).await.expect("send");
            assert_eq!(ws.expect_close(WAIT).await.0, 1000, "{path}");
            ws.expect_tcp_close(WAIT).await;
        }
    }
    srv.stop().await;
}

/// The race needs the reader and the writer on different threads: the reader
/// takes the peer's close while the writer is between two frames of a batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_events_stream_still_gets_a_close_reply() {
    let srv = std::sync::Arc::new(TestServer::spawn_with(|c| c.ws_queue = 100_000).await);
    // Keeps events flowing for the whole test.
    let publishing = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn({
        let (srv, publishing) = (srv.clone(), publishing.clone());
        async move {
            while !publishing.is_cancelled() {
                srv.publish_custom("custom.flood", 200).await;
            }
        }
    });
    for round in 0..40 {
        let mut ws = RawWs::connect_as(srv.addr, &srv.token, "/ws").await;
        ws.send(&Frame::text(r#"{"type":"subscribe","data":{"types":["custom.*"]}}"#))
            .await;
        // Read while the server writes, so its writer is busy but never blocked.
        let mut events = 0;
        while events < 300 {
            let f = ws.next_frame(WAIT).await.expect("events");
            if String::from_utf8_lossy(&f.payload).contains("custom.flood") {
                events += 1;
            }
        }
        ws.send(&Frame::close(1000, "")).await;
        let (code, _) = ws.expect_close(WAIT).await;
        assert_eq!(code, 1000, "round {round}");
        ws.expect_tcp_close(WAIT).await;
    }
    publishing.cancel();
    publisher.await.expect("publisher");
    match std::sync::Arc::try_unwrap(srv) {
        Ok(srv) => srv.stop().await,
        Err(_) => unreachable!("the publisher has ended"),
    }
}
