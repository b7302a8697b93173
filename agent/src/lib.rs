//! Portcullis: keeps known-bad API clients out, as early and as cheaply as possible.
//!
//! The agent library: the kernel map layer ([`kernel`]), identifiers ([`cidr`], [`ident`]),
//! the durable lists ([`store`]), what each control request does ([`service`]), the one task
//! that applies them ([`writer`]), the control
//! API ([`control`]), the daemon ([`daemon`]), metrics ([`metrics`]), configuration
//! ([`config`]) and the command line ([`cli`]).

pub mod abs;
pub mod activation;
pub mod checker;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod events;
pub mod fleet;
pub mod infrastructure;
pub mod kernel;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod paths;
pub mod preflight;
pub mod rest;
pub mod service;
pub mod store;
pub mod writer;
