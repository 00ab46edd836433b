//! Builds the eBPF programs (metadata-ebpf's binary) for the bpf target with
//! the nightly toolchain and bpf-linker, and drops the object into OUT_DIR
//! where `src/datapath` embeds it.
use aya_build::{Package, Toolchain};

fn main() -> aya_build::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../metadata-ebpf");
    aya_build::build_ebpf(
        [Package {
            name: "metadata-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
