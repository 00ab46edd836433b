//! `--tap-attach`: how the tap ingress program goes on each tap.
use anyhow::anyhow;

/// How the tap ingress program is attached (`--tap-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TapAttach {
    /// A TCX link, pinned under `links/`. Each costs an RCU grace period
    /// (10-20 ms) under the RTNL lock, so links cannot be made faster by
    /// making them from several threads.
    Tcx,
    /// A cls_bpf filter on the tap's ingress qdisc (added, or an ingress or
    /// clsact one already there): about 0.1 ms.
    /// The default: attaching is on the path of every VM's boot.
    #[default]
    Tc,
    /// Every tap's ingress qdisc bound to one shared filter block that
    /// holds our filter once: adding a port costs the same at 10,000 taps
    /// as at 100 (with a block per tap the kernel walks a list of all
    /// blocks on the host for each new one). Pick it for thousands of
    /// taps per host. The trade-off: the kernel then refuses tc ingress
    /// filters added to these taps by device (`tc filter add dev TAP
    /// ingress`, as neutron's QoS policing does). A tap that already has
    /// an ingress or clsact qdisc gets a `tc` filter on it instead.
    TcBlock,
}

impl TapAttach {
    pub fn as_str(self) -> &'static str {
        match self {
            TapAttach::Tcx => "tcx",
            TapAttach::Tc => "tc",
            TapAttach::TcBlock => "tc-block",
        }
    }
}

impl std::str::FromStr for TapAttach {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "tcx" => Ok(TapAttach::Tcx),
            "tc" => Ok(TapAttach::Tc),
            "tc-block" => Ok(TapAttach::TcBlock),
            _ => Err(anyhow!(
                "{text:?} is not an attach mode (tcx, tc or tc-block)"
            )),
        }
    }
}
