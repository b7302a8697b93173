//! Everything that touches the kernel: the XDP object, its maps, links and counters.
//!
//! - [`table`]: which map slots the allow/deny entries expand into (pure logic);
//! - [`filter`]: load, pin, attach, detach, write slots, read counters;
//! - [`link`], [`netlink`]: pinned links and interfaces as the kernel reports them;
//! - [`xdp_features`]: whether an interface's driver runs XDP natively;
//! - [`sys`]: the raw `bpf(2)` calls aya does not wrap;
//! - [`snapshot`]: what the kernel maps really hold, read back;
//! - [`reference`]: a brute-force model of the verdict and random operation sequences, to
//!   check the other three against.

pub mod filter;
pub mod link;
pub mod netlink;
#[cfg(any(test, feature = "testkit"))]
pub mod reference;
pub mod snapshot;
pub mod sys;
pub mod table;
pub mod xdp_features;

pub use filter::{
    AttachMode, Attached, Filter, KernelError, LoadOptions, Object, PROGRAM, ReconcileReport,
    bpffs_mounted, detach, ensure_bpffs, ifindex, link_attached,
};
pub use snapshot::KernelState;
pub use table::{Capacity, IpTable, MapFull};
