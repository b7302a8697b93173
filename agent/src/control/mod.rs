//! The control API: JSON lines over a Unix socket.
//!
//! - [`proto`]: the request and response shapes (a contract);
//! - [`server`]: the agent's side (tokio);
//! - [`client`]: the CLI's side (blocking, std only).

pub mod client;
pub mod proto;
pub mod server;
