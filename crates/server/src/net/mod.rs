//! Accepting TCP connections and serving HTTP/1.1 on them.

mod accept;

pub(crate) use accept::serve;
