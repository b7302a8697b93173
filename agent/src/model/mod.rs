//! The agent's domain types, pure (no I/O): which list, which identifier, the durable entry,
//! and the one rule that merges expiries. Every other module depends on this one; it depends
//! on nothing else in the crate.

pub mod cidr;
mod entry;
pub mod expiry;
pub mod ident;
mod list;
mod source;

pub use cidr::{Cidr, CidrError, mask32, mask128};
pub use entry::Entry;
pub use ident::{IdentError, Identifier, Kind, digest, fingerprint};
pub use list::List;
pub use source::Source;
