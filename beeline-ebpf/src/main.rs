//! beeline's datapath programs. One module per attach point, over small shared modules.
#![no_std]
#![no_main]

mod arp;
mod conntrack;
mod conntrack6;
mod drop;
mod events;
mod fib;
mod forward;
mod from_container;
mod from_overlay;
mod icmp;
mod lb;
mod lb6;
mod lookup;
mod maps;
mod nat;
mod ndp;
mod netdev;
mod nodeport;
mod parse;
mod policy;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier proves no panic path is reachable; this only satisfies the linker.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
