//! The metadata datapath: two TC programs sharing four BTF-described maps.
//!
//! * `tap_ingress` runs on every registered VM tap. It answers ARP for
//!   169.254.169.254 itself and steers TCP to 169.254.169.254:80 into the
//!   host-wide server, after rewriting the source to the port's identity
//!   address (so the server knows the port from the peer address alone).
//! * `server_egress` runs on the server's end of the daemon's veth pair and
//!   undoes the rewrite for replies, sending them out of the tap the request
//!   came in on.
//!
//! Everything else passes untouched. Parsing reads only bounds-checked
//! offsets and has no loops; every decision bumps a per-CPU counter.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod datapath;

/// Host builds of the workspace (clippy, tests) see an empty binary; the real
/// one is built for the bpf target by aya-build.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never executed.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
