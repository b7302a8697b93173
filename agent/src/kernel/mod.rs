//! Everything that touches the kernel: the XDP object, its maps, links and counters.
//!
//! - [`table`]: which map slots the allow/deny entries expand into (pure logic);
//! - [`filter`]: load, pin, attach, detach, write slots, read counters;
//! - [`sys`]: the raw `bpf(2)` calls aya does not wrap.

pub mod filter;
pub mod sys;
pub mod table;

pub use filter::{
    AttachMode, Attached, Filter, KernelError, LoadOptions, Object, PROGRAM, ReconcileReport,
    detach, ensure_bpffs,
};
pub use table::{Capacity, IpTable, List, MapFull};
