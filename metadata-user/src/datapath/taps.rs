//! The taps' lifecycle: a registered tap gets its port entry and the
//! program, an unregistered or vanished one loses both, and what a previous
//! daemon left for ports that are gone is pruned.
use std::fs;

use anyhow::Context as _;
use aya::programs::TcAttachType;
use metadata_ebpf::{PortEntry, names};
use tracing::{debug, info};

use super::{
    AttachedTap, Datapath, TapAttach,
    load::program_mut,
    netdev,
    pins::{remove_pin, tap_ifname_of_pin, tap_pin_name},
    tc_attach::{self, remove_tc_filter},
};

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
            // Re-created under the same name: the old link died with the old tap.
            Some(_) => self.detach_tap(ifname)?,
            None => {}
        }
        let identities = self.identity.addresses_of(slot)?;
        // The port's flow table, then its map entry, then the program: the
        // program passes traffic from taps it does not know, so there is no
        // window where a guest is served wrongly.
        self.flows.ensure(&identities, slot)?;
        let entry = PortEntry::new(slot, identities.map(|a| a.octets()));
        self.ports
            .insert(ifindex, entry, 0)
            .with_context(|| format!("registering {ifname} in the port map"))?;
        if let Err(err) = self.attach_tap_program(ifname, ifindex) {
            let _ = self.ports.remove(&ifindex);
            self.flows.remove(&identities);
            return Err(err.context(format!("attaching to {ifname}")));
        }
        info!(
            ifname,
            ifindex,
            slot,
            mode = self.tap_attach.as_str(),
            "tap attached"
        );
        self.attached.insert(ifname.to_string(), wanted);
        Ok(())
    }

    /// Stops serving `ifname`: drops its port entry and its link. Also used
    /// when the tap disappeared (the kernel already dropped the link then).
    pub fn detach_tap(&mut self, ifname: &str) -> anyhow::Result<()> {
        let Some(old) = self.attached.remove(ifname) else {
            return Ok(());
        };
        let _ = self.ports.remove(&old.ifindex);
        // Its open connections cannot get replies any more (the tap is gone,
        // or no longer ours): the flow table goes too.
        if let Ok(identities) = self.identity.addresses_of(old.slot) {
            self.flows.remove(&identities);
        }
        // Both modes' attachments, whichever this daemon uses: cheap when
        // absent, and a tap never keeps a program we no longer account for.
        remove_tc_filter(old.ifindex);
        self.remove_tcx_link(ifname)?;
        info!(ifname, ifindex = old.ifindex, "tap detached");
        Ok(())
    }

    /// Puts the tap ingress program on `ifindex` the configured way, then
    /// removes what the other mode may have left there (a previous daemon
    /// ran with the other `--tap-attach`): only once the new attachment is
    /// in place, so the tap is never without a program.
    fn attach_tap_program(&mut self, ifname: &str, ifindex: u32) -> anyhow::Result<()> {
        match self.tap_attach {
            TapAttach::Tcx => {
                self.attach_program(
                    names::TAP_INGRESS,
                    ifindex,
                    TcAttachType::Ingress,
                    &tap_pin_name(ifname),
                )?;
                remove_tc_filter(ifindex);
            }
            TapAttach::Tc => {
                let current = netdev::ifname_of(ifindex)?;
                let prog = program_mut(&mut self.ebpf, names::TAP_INGRESS)?;
                tc_attach::attach(prog, &current)?;
                self.remove_tcx_link(ifname)?;
            }
        }
        Ok(())
    }

    /// Forgets port entries, flow tables and link pins that no attached tap
    /// accounts for: what a previous daemon left for ports that are gone now.
    pub fn prune(&mut self) -> anyhow::Result<()> {
        let identities: std::collections::HashSet<std::net::Ipv4Addr> = self
            .attached
            .values()
            .filter_map(|tap| self.identity.addresses_of(tap.slot).ok())
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
            // A previous daemon in tc mode left its filter on that tap (TCX
            // links are handled with their pins below).
            remove_tc_filter(ifindex);
        }
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
