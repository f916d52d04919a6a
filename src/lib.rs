//! poed: serves completions from a logged-in Poe web session to local programs.
//!
//! A long-running daemon keeps Chromium open on a persistent profile through the DevTools
//! protocol ([`browser::supervisor`]), lends warm tabs to requests ([`browser::tab_pool`]),
//! drives the Poe page like a person ([`site::poe::driver`]) and reads replies straight from
//! the page's WebSocket frames ([`browser::tab`] pumps them, [`site::poe::frames`] parses
//! them). Clients speak newline-delimited JSON over a local socket ([`protocol`],
//! [`daemon::ipc_server`]); [`client`] is the reference client that `poectl` is built on.
//! [`daemon::run`] ties it together and shuts it down in order. [`redact`] keeps secrets
//! (cookies, keys, credentials, socket tokens) out of every log line. [`history`] records
//! every request in SQLite for `poectl history`; [`chat`] is `poectl chat`.

pub mod browser;
pub mod chat;
pub mod client;
pub mod config;
pub mod cookies;
pub mod daemon;
pub mod error;
pub mod history;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod redact;
pub mod reply;
pub mod site;

pub use error::{Error, ErrorKind};
