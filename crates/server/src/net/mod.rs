//! Binding, accepting TCP connections and serving HTTP/1.1 on them.

mod accept;
pub(crate) mod tls;

pub use accept::MAX_HEADER_BYTES;
pub(crate) use accept::serve;
pub use tls::{TlsError, load_acceptor};

use std::net::SocketAddr;

/// Pending-connection queue of the listener. The default of 128 overflowed in
/// connect storms (thousands of dashboards reconnecting after a restart) and the
/// dropped SYNs cost clients a one-second retransmit; the kernel caps it at
/// `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener with a large accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(socket.into())
}
