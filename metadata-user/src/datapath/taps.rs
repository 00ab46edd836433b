//! The taps' lifecycle: a registered tap gets its port entry and the
//! program, an unregistered or vanished one loses both, and what a previous
//! daemon left for ports that are gone is pruned.
use std::fs;

use anyhow::Context as _;
use aya::programs::TcAttachType;
use metadata_ebpf::PortEntry;
use tracing::{debug, info};

use super::{
    AttachedTap, Datapath, TapAttach, netdev,
    pins::{remove_pin, tap_ifname_of_pin, tap_pin_name},
    sys,
    tc_attach::{self, remove_tc_filter},
    tc_block::{self, Binding},
    tcx::attach_program,
};

/// What detaching a tap does with its port's flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableFate {
    /// The port is gone: so is its table.
    Remove,
    /// The port stays registered (its tap went, or was re-created): the
    /// table stays, emptied, for when the tap is back.
    Keep,
}

impl Datapath {
    /// Starts serving the guest behind `ifname` (now `ifindex`) as `slot`.
    /// Idempotent: attaching what is already attached does nothing.
    pub fn attach_tap(&mut self, ifname: &str, ifindex: u32, slot: u32) -> anyhow::Result<()> {
        let wanted = AttachedTap { ifindex, slot };
        match self.attached.get(ifname) {
            Some(current) if *current == wanted => return Ok(()),
            Some(current) if current.ifindex == ifindex => {
                // Same tap, another slot: the link stays, the port entry and
                // the flow table change.
                let identities = self.identity.addresses_of(slot)?;
                self.flows.ensure(&identities, slot)?;
                let entry = PortEntry::new(slot, identities.map(|a| a.octets()));
                self.ports
                    .insert(ifindex, entry, 0)
                    .with_context(|| format!("updating {ifname} in the port map"))?;
                self.flows
                    .remove(&self.identity.addresses_of(current.slot)?);
                self.attached.insert(ifname.to_string(), wanted);
                return Ok(());
            }
            // Re-created under the same name: the old link died with the old
            // tap. The port keeps its table, emptied of the old tap's flows.
            Some(current) => {
                let old_slot = current.slot;
                self.detach_tap(ifname, TableFate::Keep)?;
                if old_slot != slot {
                    self.flows.remove(&self.identity.addresses_of(old_slot)?);
                }
            }
            None => {}
        }
        let identities = self.identity.addresses_of(slot)?;
        // The port's flow table, then its map entry, then the program: the
        // program passes traffic from taps it does not know, so there is no
        // window where a guest is served wrongly.
        self.flows.ensure(&identities, slot)?;
        let entry = PortEntry::new(slot, identities.map(|a| a.octets()));
        if self.ports.get(&ifindex, 0).ok() != Some(entry) {
            self.ports
                .insert(ifindex, entry, 0)
                .with_context(|| format!("registering {ifname} in the port map"))?;
        }
        let how = if self.runs_our_program(ifname, ifindex) {
            // A previous daemon attached this tap, and its program is the
            // one we run (see `load`): nothing to change in the kernel.
            "kept"
        } else {
            if let Err(err) = self.attach_tap_program(ifname, ifindex) {
                let _ = self.ports.remove(&ifindex);
                return Err(err.context(format!("attaching to {ifname}")));
            }
            "attached"
        };
        debug!(
            ifname,
            ifindex,
            slot,
            mode = self.tap_attach.as_str(),
            how,
            "tap attached"
        );
        self.attached.insert(ifname.to_string(), wanted);
        Ok(())
    }

    /// Whether `ifindex` already runs our tap program the configured way,
    /// as a previous daemon left it. Only asked the first time a tap is
    /// seen: after a restart, this is what makes re-attaching thousands of
    /// taps cost a lookup each instead of an attach.
    ///
    /// In tc mode only until the first pass is done (`prune`): the lookup
    /// is a filter dump that waits for the rtnl lock, and a tap first seen
    /// later carries no filter a previous daemon left in place for it (the
    /// first pass attached or pruned those). Should one be there anyway,
    /// attaching finds it (EEXIST) and swaps its program.
    fn runs_our_program(&self, ifname: &str, ifindex: u32) -> bool {
        match self.tap_attach {
            TapAttach::Tc | TapAttach::TcBlock if self.started => false,
            TapAttach::Tcx => sys::tcx_ingress_link(&self.links_dir.join(tap_pin_name(ifname)))
                .ok()
                .flatten()
                .is_some_and(|link| link.ifindex == ifindex && link.prog_id == self.tap_program_id),
            TapAttach::Tc => {
                tc_attach::our_program(ifindex).ok().flatten() == Some(self.tap_program_id)
                    && !self.links_dir.join(tap_pin_name(ifname)).exists()
            }
            // The block's filter runs our program (`load` made sure); a
            // tap on another qdisc (the fallback) is attached again, which
            // finds its filter and keeps it (EEXIST).
            TapAttach::TcBlock => {
                tc_block::is_bound(ifindex) && !self.links_dir.join(tap_pin_name(ifname)).exists()
            }
        }
    }

    /// Stops serving `ifname`: drops its port entry and its link. Also used
    /// when the tap disappeared (the kernel already dropped the link then).
    /// The port's flow table goes too unless the port stays registered.
    pub fn detach_tap(&mut self, ifname: &str, table: TableFate) -> anyhow::Result<()> {
        let Some(old) = self.attached.remove(ifname) else {
            return Ok(());
        };
        let _ = self.ports.remove(&old.ifindex);
        // Its open connections cannot get replies any more (the tap is gone,
        // or no longer ours): their flows go.
        if let Ok(identities) = self.identity.addresses_of(old.slot) {
            match table {
                TableFate::Remove => self.flows.remove(&identities),
                TableFate::Keep => self.flows.flush(&identities),
            }
        }
        // Every mode's attachments, whichever this daemon uses: cheap when
        // absent, and a tap never keeps a program we no longer account for.
        remove_tc_attachments(old.ifindex);
        self.remove_tcx_link(ifname)?;
        info!(ifname, ifindex = old.ifindex, "tap detached");
        Ok(())
    }

    /// Has flow tables made in the background for these ports (identity
    /// from the slot) unless they have one: for the slots the registry
    /// hands out next, and for a pass's many ports at once.
    pub fn prepare_tables(&self, slots: impl IntoIterator<Item = u32>) {
        self.flows.prepare(
            slots
                .into_iter()
                .filter_map(|slot| Some((self.identity.addresses_of(slot).ok()?, slot))),
        );
    }

    /// Puts the tap ingress program on `ifindex` the configured way, then
    /// removes what the other mode may have left there (a previous daemon
    /// ran with the other `--tap-attach`): only once the new attachment is
    /// in place, so the tap is never without a program.
    fn attach_tap_program(&mut self, ifname: &str, ifindex: u32) -> anyhow::Result<()> {
        match self.tap_attach {
            TapAttach::Tcx => {
                let pin = tap_pin_name(ifname);
                attach_program(
                    &mut self.tap_program,
                    &self.links_dir,
                    ifindex,
                    TcAttachType::Ingress,
                    &pin,
                )?;
                remove_tc_attachments(ifindex);
            }
            TapAttach::Tc => {
                let current = netdev::ifname_of(ifindex)?;
                if let Err(err) = tc_attach::attach(&mut self.tap_program, &current, ifindex) {
                    // A previous daemon in tc-block mode bound the tap's
                    // qdisc to the shared block, which takes no filter by
                    // device: the qdisc goes (the tap is without a program
                    // until the next line), then the filter is added.
                    if !tc_block::is_bound(ifindex) {
                        return Err(err);
                    }
                    tc_block::unbind(ifindex).context("leaving the shared tc block")?;
                    tc_attach::attach(&mut self.tap_program, &current, ifindex)?;
                }
                self.remove_tcx_link(ifname)?;
            }
            TapAttach::TcBlock => {
                match tc_block::bind(ifindex)
                    .context("adding an ingress qdisc on the shared tc block")?
                {
                    Binding::Ours => {}
                    // Someone else's ingress or clsact qdisc: it stays, and
                    // takes a filter of its own, as in tc mode.
                    Binding::Foreign => {
                        let current = netdev::ifname_of(ifindex)?;
                        debug!(ifname, "an ingress qdisc of its own: per-tap filter");
                        tc_attach::attach(&mut self.tap_program, &current, ifindex)?;
                    }
                }
                self.remove_tcx_link(ifname)?;
            }
        }
        Ok(())
    }

    /// Forgets port entries, flow tables and link pins that no attached tap
    /// accounts for: what a previous daemon left for ports that are gone now.
    /// `registered` are the slots of every registered port: their tables
    /// stay even while their taps are absent, as do spare tables for the
    /// slots handed out next (`spares`).
    pub fn prune(
        &mut self,
        registered: impl IntoIterator<Item = u32>,
        spares: impl IntoIterator<Item = u32>,
    ) -> anyhow::Result<()> {
        let identities: std::collections::HashSet<std::net::Ipv4Addr> = registered
            .into_iter()
            .chain(spares)
            .filter_map(|slot| self.identity.addresses_of(slot).ok())
            .flatten()
            .collect();
        self.flows.retain(&identities);
        let live: std::collections::HashSet<u32> =
            self.attached.values().map(|tap| tap.ifindex).collect();
        let stale: Vec<u32> = self
            .ports
            .keys()
            .filter_map(Result::ok)
            .filter(|ifindex| !live.contains(ifindex))
            .collect();
        for ifindex in stale {
            debug!(ifindex, "removing stale port entry");
            let _ = self.ports.remove(&ifindex);
            // A previous daemon in tc or tc-block mode left its filter or
            // qdisc on that tap (TCX links are handled with their pins below).
            remove_tc_attachments(ifindex);
        }
        self.started = true;
        for entry in fs::read_dir(&self.links_dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let Some(ifname) = tap_ifname_of_pin(&name) else {
                continue;
            };
            if !self.attached.contains_key(&ifname) {
                debug!(ifname, "removing stale link pin");
                remove_pin(&self.links_dir.join(name.as_ref()))?;
            }
        }
        Ok(())
    }
}

/// Removes what either tc mode put on `ifindex`: our ingress qdisc on the
/// shared block (only if bound to it), then our per-tap filter. Failures
/// are logged: what stays passes everything for a tap that is no port.
pub fn remove_tc_attachments(ifindex: u32) {
    tc_block::release(ifindex);
    remove_tc_filter(ifindex);
}
