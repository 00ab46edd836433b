//! Names and removal of what the datapath pins under `--bpffs`.
use std::{fs, path::Path};

use anyhow::Context as _;

/// The pin of a tap's TCX link. bpffs refuses names with a '.', which
/// interface names may contain.
pub fn tap_pin_name(ifname: &str) -> String {
    format!("tap-{}", ifname.replace('%', "%25").replace('.', "%2e"))
}

/// The interface name a tap link pin stands for; None for other pins.
pub fn tap_ifname_of_pin(pin: &str) -> Option<String> {
    let encoded = pin.strip_prefix("tap-")?;
    Some(encoded.replace("%2e", ".").replace("%25", "%"))
}

/// Removes one pin; a missing one is fine.
pub fn remove_pin(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes everything the datapath pinned under `bpffs`: links (which
/// detaches the programs), programs and maps.
pub fn remove_pins(bpffs: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(bpffs) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", bpffs.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_pin_names_round_trip() {
        for ifname in ["tap0", "tap.1", "a%2eb", "%", "x.%."] {
            let pin = tap_pin_name(ifname);
            assert!(!pin.contains('.'), "{pin}");
            assert_eq!(tap_ifname_of_pin(&pin).as_deref(), Some(ifname));
        }
        assert_eq!(tap_ifname_of_pin("server-egress"), None);
    }
}
