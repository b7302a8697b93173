//! The production XDP program the agent attaches to interfaces.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Entry point: every packet's verdict comes from [`filter_ebpf::filter`].
#[xdp]
pub fn portcullis(ctx: XdpContext) -> u32 {
    filter_ebpf::filter(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
