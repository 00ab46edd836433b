//! The namespace harness for metadata-redirector's root-only end-to-end
//! tests (the `integration-tests` crate in `tests/`), the benchmark and
//! `cargo xtask run --demo`.
//!
//! Everything a test builds lives in network namespaces it creates itself: a
//! "hypervisor" namespace ([`Host`]) holds the daemon, the bridges and the
//! taps; each tenant network ([`TenantNet`]) adds a router namespace; each
//! guest ([`Guest`], [`QemuGuest`]) is a namespace or a VM behind a tap. The
//! real host namespace never carries test traffic. Every piece removes what
//! it made when it is dropped, also while a failing test unwinds, and every
//! name carries the process id, a counter and a random part, so parallel runs
//! and leftovers of killed runs never clash ([`names::sweep_stale`] clears the
//! latter).
//!
//! OpenStack mode adds a fake nova-api-metadata ([`FakeNova`]) on the host
//! namespace's loopback and neutron's haproxy metadata proxy
//! ([`haproxy::NeutronProxy`]) in a router namespace.
//!
//! The tests find the daemon binary in `MDR_BIN`, the fake nova in
//! `MDR_FAKE_NOVA` and the guest kernel in `MDR_GUEST_DIR` (`cargo xtask
//! test` sets them; see [`env`]).

pub mod bpffs;
pub mod check;
pub mod cmd;
pub mod daemon;
pub mod env;
pub mod fixtures;
pub mod flows;
pub mod guest;
pub mod haproxy;
pub mod held_listener;
pub mod host;
pub mod http;
pub mod initramfs;
pub mod libvirt;
pub mod listener;
pub mod names;
pub mod netns;
pub mod nova;
pub mod pinned_map;
pub mod python;
pub mod qemu;
pub mod quiet_guest;
pub mod slow_clients;
pub mod tempdir;
pub mod tenant;
pub mod wait;

pub use daemon::{Daemon, DaemonConfig};
pub use fixtures::{Instance, check_own_answers, check_own_answers_with};
pub use guest::{Guest, GuestConfig, Route};
pub use host::Host;
pub use http::{Reply, Request};
pub use netns::Netns;
pub use nova::{FakeNova, FakeNovaConfig};
pub use qemu::{QemuConfig, QemuGuest};
pub use tenant::TenantNet;

/// The address every guest asks for metadata.
pub const METADATA_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);
