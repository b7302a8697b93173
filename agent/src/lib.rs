//! Portcullis: keeps known-bad API clients out, as early and as cheaply as possible.
//!
//! This crate is the agent: the kernel map layer ([`kernel`]) and the list model ([`cidr`]).

pub mod cidr;
pub mod kernel;
pub mod paths;
