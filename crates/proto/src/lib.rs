//! SigmaVault wire types, shared by the server and every client.
//!
//! This crate is deliberately free of async runtimes and web frameworks so that
//! desktop apps, scripts and the `sigmavault` CLI can depend on it cheaply. The
//! normative description of everything here is `docs/protocol.md`.

pub mod client;
pub mod close;
pub mod error;
pub mod pattern;
pub mod server;
pub mod topics;

pub use client::{ClientCommand, ClientMessage, CommandError, Secret};
pub use close::CloseCode;
pub use error::{ErrorBody, ErrorDetail, FieldError};
pub use pattern::{Pattern, PatternError, SubscriptionSet};
pub use server::ServerMessage;
pub use topics::{DeliveryClass, TopicInfo, topic_info};

/// Version of the WebSocket protocol described in `docs/protocol.md`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol name clients may offer.
pub const SUBPROTOCOL: &str = "sigmavault.v1";
