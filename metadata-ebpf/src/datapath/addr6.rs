//! IPv6 addresses as the programs hold them: 4-byte aligned, so that LLVM
//! reads, writes and compares them as four 32-bit words. As plain
//! `[u8; 16]` they are moved byte by byte, and with a few of them live the
//! register allocator spills every byte to an 8-byte stack slot, which
//! overran eBPF's 512-byte stack.
use aya_ebpf::programs::TcContext;
use metadata_ebpf::{DatapathConfig, METADATA_ADDRS6};

#[repr(C, align(4))]
#[derive(Clone, Copy)]
pub(super) struct Addr6(pub(super) [u8; 16]);

/// `::`, the source of a duplicate address detection's solicitation.
pub(super) const UNSPECIFIED: Addr6 = Addr6([0; 16]);

impl Addr6 {
    /// The address `offset` bytes into the packet (copied with
    /// `bpf_skb_load_bytes`, whatever the packet's alignment).
    #[inline(always)]
    pub(super) fn load(ctx: &TcContext, offset: usize) -> Option<Self> {
        ctx.load::<Addr6>(offset).ok()
    }

    #[inline(always)]
    fn words(&self) -> [u32; 4] {
        // SAFETY: Addr6 is 16 bytes aligned to 4, as [u32; 4] needs.
        unsafe { *(self.0.as_ptr() as *const [u32; 4]) }
    }

    /// Equality, word by word (a plain `==` on arrays may become a `bcmp`
    /// call, which eBPF does not have).
    #[inline(always)]
    pub(super) fn is(&self, other: &Addr6) -> bool {
        let (a, b) = (self.words(), other.words());
        ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0
    }
}

/// The IPv6 metadata address at `index` in the configuration.
#[inline(always)]
pub(super) fn metadata_addr6(config: &DatapathConfig, index: usize) -> Addr6 {
    let addrs: &[[u8; 16]; METADATA_ADDRS6] = &config.metadata_addrs6;
    let addr = if index == 0 { &addrs[0] } else { &addrs[1] };
    // SAFETY: the field lies at a 4-byte offset of a 4-byte aligned value
    // (asserted in the shared crate), so the cast is aligned.
    unsafe { *(addr as *const [u8; 16] as *const Addr6) }
}

/// Which served IPv6 metadata address `addr` is, if any.
#[inline(always)]
pub(super) fn metadata_index6(config: &DatapathConfig, addr: &Addr6) -> Option<usize> {
    if config.served6 & 1 != 0 && addr.is(&metadata_addr6(config, 0)) {
        Some(0)
    } else if config.served6 & 2 != 0 && addr.is(&metadata_addr6(config, 1)) {
        Some(1)
    } else {
        None
    }
}
