//! The control API: JSON lines over a Unix socket.
//!
//! - [`proto`]: the requests and the response envelope (a contract);
//! - [`answer`]: what each request answers, typed (a contract too);
//! - [`server`]: the agent's side (tokio);
//! - [`client`]: the CLI's side (blocking, std only).

pub mod answer;
pub mod client;
pub mod proto;
pub mod server;
