//! TCX attachment: a program on a hook as a link pinned under `links/`, so
//! that it outlives the daemon, and replaced only once its successor is in
//! place.
use std::{fs, path::Path};

use anyhow::Context as _;
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::TcAttachOptions,
};
use tracing::debug;

use super::{
    Datapath, netdev,
    pins::{remove_pin, tap_pin_name},
    sys,
};

/// Attaches `prog` with TCX and pins the link as `<links_dir>/<pin_name>`,
/// replacing a link a previous daemon (or a previous tap) left there only
/// after the new one is in place.
pub(super) fn attach_program(
    prog: &mut SchedClassifier,
    links_dir: &Path,
    ifindex: u32,
    attach_type: TcAttachType,
    pin_name: &str,
) -> anyhow::Result<()> {
    let ifname = netdev::ifname_of(ifindex)?;
    let id = prog
        .attach_with_options(
            &ifname,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| format!("attaching {pin_name} to {ifname}"))?;
    let link: FdLink = prog.take_link(id)?.try_into()?;
    let pin = links_dir.join(pin_name);
    let staging = links_dir.join(format!("staging-{pin_name}"));
    remove_pin(&staging)?;
    let pinned: PinnedLink = link
        .pin(&staging)
        .with_context(|| format!("pinning {}", staging.display()))?;
    // Renaming over the old pin drops the old link (nobody else holds it).
    fs::rename(&staging, &pin).with_context(|| format!("moving link pin to {}", pin.display()))?;
    drop(pinned);
    Ok(())
}

impl Datapath {
    /// Removes the TCX link pinned for `ifname`, if any.
    pub(super) fn remove_tcx_link(&self, ifname: &str) -> anyhow::Result<()> {
        let pin = self.links_dir.join(tap_pin_name(ifname));
        if !pin.exists() {
            return Ok(());
        }
        // Detach now rather than when the kernel gets round to releasing the
        // unpinned link: attaching the same program to the same tap again
        // soon after (port del + port add) fails with EEXIST while it lives.
        if let Err(err) = sys::detach_pinned_link(&pin) {
            debug!(ifname, %err, "link already gone");
        }
        remove_pin(&pin)
    }
}
