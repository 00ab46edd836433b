//! Types shared by the TC programs (`src/main.rs`) and the userspace daemon.
//!
//! Every map value is `#[repr(C)]` with explicit padding so the layout is the
//! same on both sides and the BTF that bpf-linker emits describes it field by
//! field (`bpftool map dump pinned ...` prints the names). Addresses and MACs
//! are byte arrays in wire order: the programs copy them straight from and to
//! packets, and bpftool prints them as dotted bytes.
#![cfg_attr(not(test), no_std)]

/// The IPv4 metadata address guests ask by default, 169.254.169.254 (the
/// daemon writes the one it serves into `DatapathConfig::metadata_addr`).
pub const METADATA_ADDR: [u8; 4] = [169, 254, 169, 254];
/// OpenStack's IPv6 metadata address, `fe80::a9fe:a9fe`: link-local, so a
/// guest reaches it on its own link (neutron since 2020, OVN since 2024;
/// cloud-init 23.1 and later try it first).
pub const METADATA_ADDR6_OPENSTACK: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xa9, 0xfe, 0xa9, 0xfe,
];
/// EC2's IPv6 metadata address, `fd00:ec2::254`: a unique local address
/// the guest reaches through its router (botocore's IPv6 endpoint mode).
pub const METADATA_ADDR6_EC2: [u8; 16] = [
    0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54,
];
/// How many IPv6 metadata addresses the datapath can serve at once.
pub const METADATA_ADDRS6: usize = 2;
/// The IPv6 metadata addresses served by default, in the order of
/// `DatapathConfig::metadata_addrs6`.
pub const DEFAULT_METADATA_ADDRS6: [[u8; 16]; METADATA_ADDRS6] =
    [METADATA_ADDR6_OPENSTACK, METADATA_ADDR6_EC2];
/// IPv6's minimum link MTU (RFC 8200): a tap with a smaller MTU is not
/// served over IPv6.
pub const IPV6_MIN_MTU: u32 = 1280;
/// Identity lanes: a port has one identity address per kind of connection
/// the server sees, so that two connections of one guest never share a
/// (identity address, source port) pair whatever address family or
/// metadata address each used. Lane 0 carries IPv4; lane `1 + i` carries
/// IPv6 connections to `metadata_addrs6[i]`.
pub const IDENTITY_LANES: usize = 1 + METADATA_ADDRS6;
/// The metadata port guests connect to.
pub const METADATA_PORT: u16 = 80;
/// The MAC the datapath answers ARP for 169.254.169.254 with. Locally
/// administered (0x0a), and the last four bytes spell 169.254.169.254, so it is
/// easy to recognise in a guest's neighbour table or a capture.
pub const METADATA_MAC: [u8; 6] = [0x0a, 0x58, 0xa9, 0xfe, 0xa9, 0xfe];

/// Capacity of the `PORTS` map (registered taps on one host).
pub const MAX_PORTS: u32 = 65_536;
/// Capacity of `FLOWS`: each port's flow table is there under each of the
/// port's identity addresses (one per lane).
pub const MAX_FLOW_TABLE_KEYS: u32 = MAX_PORTS * IDENTITY_LANES as u32;
/// Capacity of each port's own flow table (an LRU of the guest connections
/// remembered for the return path), the inner maps of `FLOWS`.
///
/// Each registered port has a table of its own, so a port's new connections
/// can only ever evict that port's own flows: whatever one guest sends (a
/// flood of SYNs it never completes, included), another guest's flows stay.
/// A half-open flow needs no expiry for that: it only takes room in its own
/// guest's table, and that guest's next connections push it out.
///
/// 128 is twice what the server lets one port hold open
/// (`MAX_CONNECTIONS_PER_PORT`, 64), so a guest within the server's limit
/// does not evict its own live flows either: the kernel's LRU can start
/// evicting before a table is full (it hands free entries to the CPUs in
/// batches), hence the room to spare.
///
/// Kernel memory: a table is preallocated, 13,184 bytes as the kernel
/// accounts it (`bpftool map show`: memlock), created when a port is
/// attached and freed when it is detached: 132 MB for 10,000 ports, 13 MB
/// for 1,000.
pub const MAX_FLOWS_PER_PORT: u32 = 128;
/// Default cap on new connections (SYNs) per port per second. It bounds how
/// fast one guest can churn the shared FLOWS table and the server's SYN
/// queue; cloud-init's whole first boot is ~35 connections.
pub const DEFAULT_SYN_RATE_PER_PORT: u32 = 10_000;

/// Names of the maps and programs in the object file, used for pinning.
pub mod names {
    pub const PORTS: &str = "PORTS";
    pub const FLOWS: &str = "FLOWS";
    pub const CONFIG: &str = "CONFIG";
    pub const COUNTERS: &str = "COUNTERS";
    pub const TAP_INGRESS: &str = "tap_ingress";
    /// The return path. It ran on the server end's egress once, hence the
    /// name; it now runs at the ingress of the pair's entry end, where the
    /// server's replies arrive from its namespace.
    pub const SERVER_EGRESS: &str = "server_egress";
}

/// `PORTS[tap ifindex]`: a tap that is registered for metadata.
///
/// The identity address is what the server sees as the connection's peer; it
/// is derived from the port's slot by userspace, so the datapath never has to
/// trust anything the guest put in a packet to know who is asking.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    /// The port's stable slot (persisted by the daemon, survives tap re-creation).
    pub slot: u32,
    /// Source address the guest's IPv4 packets get on the way to the server.
    pub identity_addr: [u8; 4],
    /// Source address of the guest's IPv6 packets to `metadata_addrs6[i]`,
    /// translated to IPv4 on the way to the server (identity lane `1 + i`).
    pub identity_addrs6: [[u8; 4]; METADATA_ADDRS6],
    /// Start of the current one-second SYN budget window (bpf_ktime_get_ns).
    pub syn_window_start_ns: u64,
    /// SYNs seen in the current window (updated by the program, racy across
    /// CPUs by design: an approximate budget needs no lock).
    pub syn_count: u32,
    pub _pad: u32,
}

impl PortEntry {
    /// A port's entry from its identity addresses, lane by lane (lane 0 is
    /// IPv4's, then one per IPv6 metadata address).
    pub fn new(slot: u32, identities: [[u8; 4]; IDENTITY_LANES]) -> Self {
        Self {
            slot,
            identity_addr: identities[0],
            identity_addrs6: [identities[1], identities[2]],
            syn_window_start_ns: 0,
            syn_count: 0,
            _pad: 0,
        }
    }
}

/// `FLOWS[identity address]` is the port's own flow table (an LRU hash map
/// of [`MAX_FLOWS_PER_PORT`] entries, created by the daemon when it attaches
/// the port); this is its key: one guest TCP connection as the server sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub identity_addr: [u8; 4],
    /// The guest's TCP source port, network byte order (left as the guest chose it).
    pub guest_port_be: u16,
    pub _pad: u16,
}

/// `FLOWS` value: what the return path needs to hand a reply back to the
/// guest, and how far the connection's close has got.
///
/// A flow lives from the guest's SYN until the connection is over: both FINs
/// seen (removed by the server-end program on the server's last segment) or
/// a RST from either side. See [`guest_step`] and [`server_step`] for the
/// close rules and the comment above them for their edge cases.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// The guest's own source address, as it sent it: an IPv6 address, or
    /// an IPv4 one in the first four bytes (the rest zero); see `family`.
    pub guest_addr: [u8; 16],
    /// The tap the request came in on; replies leave through it.
    pub tap_ifindex: u32,
    /// The guest's MAC (destination of replies).
    pub guest_mac: [u8; 6],
    /// The MAC the guest sent to (router, DHCP port or `METADATA_MAC`); replies
    /// come from it so the guest's neighbour cache stays consistent.
    pub gateway_mac: [u8; 6],
    /// Non-zero once the guest's FIN has passed tap ingress. Written only by
    /// the tap program, so it needs no atomic: a byte of its own rather than
    /// a bit in a shared flags byte, whose read-modify-write could lose the
    /// other program's bit when both run at once on different CPUs.
    pub guest_fin: u8,
    /// Non-zero once the server's FIN has passed server egress (written only
    /// by the server-end program).
    pub server_fin: u8,
    /// The IP version the guest speaks on this connection, 4 or 6: the
    /// server's replies are translated back to IPv6 for 6.
    pub ip_version: u8,
    /// IPv6 connections: which of `DatapathConfig::metadata_addrs6` the
    /// guest asked, the source of the replies. 0 for IPv4.
    pub metadata_index: u8,
    pub _pad: [u8; 4],
}

impl FlowEntry {
    /// A new IPv4 connection's entry: nothing closed yet.
    pub fn new(
        guest_addr: [u8; 4],
        tap_ifindex: u32,
        guest_mac: [u8; 6],
        gateway_mac: [u8; 6],
    ) -> Self {
        let mut addr = [0; 16];
        addr[0] = guest_addr[0];
        addr[1] = guest_addr[1];
        addr[2] = guest_addr[2];
        addr[3] = guest_addr[3];
        Self {
            guest_addr: addr,
            tap_ifindex,
            guest_mac,
            gateway_mac,
            guest_fin: 0,
            server_fin: 0,
            ip_version: 4,
            metadata_index: 0,
            _pad: [0; 4],
        }
    }

    /// A new IPv6 connection's entry, to `metadata_addrs6[metadata_index]`.
    pub fn new6(
        guest_addr: [u8; 16],
        metadata_index: u8,
        tap_ifindex: u32,
        guest_mac: [u8; 6],
        gateway_mac: [u8; 6],
    ) -> Self {
        Self {
            guest_addr,
            tap_ifindex,
            guest_mac,
            gateway_mac,
            guest_fin: 0,
            server_fin: 0,
            ip_version: 6,
            metadata_index,
            _pad: [0; 4],
        }
    }

    /// The guest's own address, as an IP address of its family.
    pub fn guest_ip(&self) -> core::net::IpAddr {
        let a = self.guest_addr;
        if self.ip_version == 6 {
            core::net::IpAddr::V6(core::net::Ipv6Addr::from(a))
        } else {
            core::net::IpAddr::V4(core::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        }
    }
}

/// The TCP flags the datapath looks at (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

// How a flow ends: a flow lives from the guest's SYN until its connection
// is over, so a port's flow table holds the connections open now, not every
// connection made lately. The two functions below are the whole rule set;
// the programs only carry out what they return.
//
// * Tap ingress looks the flow up only on FIN or RST segments, so the
//   common path (data, ACKs) does no extra map work. A guest FIN sets
//   `guest_fin`; a guest RST removes the flow (the server does not answer a
//   RST, so no reply will need it).
// * Server egress already looks the flow up for every reply. A server FIN
//   sets `server_fin`; once both are set the flow is removed after the
//   redirect data has been copied out, so the segment that completes the
//   close still reaches the guest. That segment is the server's last one in
//   either order: server closes first (Connection: close) -> its ACK of the
//   guest's FIN; guest closes first (keep-alive client hanging up) -> the
//   server's FIN (the guest's final ACK needs no flow: ingress rewrites from
//   PORTS alone). Simultaneous close works out the same way, since the
//   server always ACKs the guest's FIN after ingress has marked it. A server
//   RST removes the flow too.
// * Each mark is a byte of its own written by one program only, so the two
//   programs never race on a read-modify-write.
//
// Edge cases, and why they are acceptable:
// * A segment the server sends after removal finds no flow and is dropped.
//   Without data or SYN (the ACK that the server, in TIME_WAIT, sends for a
//   retransmitted guest FIN after its first ACK was lost; a late RST) it is
//   counted as `dropped_no_flow_late`: the guest has already closed, its
//   kernel retries the FIN and then gives up, and no application waits.
//   With data (a retransmission of a reply segment lost between the tap and
//   the guest after both FINs were seen, which needs a loss on the
//   veth/redirect/tap path) it is `dropped_no_flow`, as an eviction was.
// * The guest reusing a source port: its new SYN overwrites the entry with
//   both marks cleared, so an old connection's marks never close the new
//   one early.
// * Userspace resolves the peer at accept time (`FlowTable::origin`). A
//   fast guest may have sent its FIN already (a half-close after the
//   request); that only sets `guest_fin`, and the flow stays until the
//   server's FIN, which cannot come before the server has accepted and
//   answered. Only a guest RST before accept removes it, and then the
//   connection is dead anyway.
// * Keep-alive connections keep their flow as long as they are open; the
//   server's idle timeout (or the guest hanging up) closes them like any
//   other.
// * A stray RST from the guest (outside the window, which the server would
//   ignore) still removes the flow: it can only break the guest's own
//   connection, as the key is the guest's own tap identity.
// * A guest FIN or RST for a flow already gone (retransmission, daemon
//   restart with recreated maps) finds nothing and changes nothing; the
//   segment is still redirected.

/// What tap ingress does with the guest's flow for a segment the guest sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestStep {
    /// A connection's first SYN (SYN without ACK): remember the flow,
    /// overwriting an entry an earlier connection from the same source port
    /// left, marks and all. Only this step writes a new entry, so the common
    /// path (data, ACKs) does no map update.
    Open,
    /// A RST: remove the flow (counted as `flows_reset` if there was one).
    Reset,
    /// A FIN: mark `guest_fin` on the flow, if there is one.
    MarkFin,
    /// Anything else: the flow table is not touched (not even looked up).
    Nothing,
}

/// The close rules for a guest's segment with TCP `flags`.
pub const fn guest_step(flags: u8) -> GuestStep {
    use tcp_flags::*;
    if flags & (SYN | ACK) == SYN {
        GuestStep::Open
    } else if flags & RST != 0 {
        GuestStep::Reset
    } else if flags & FIN != 0 {
        GuestStep::MarkFin
    } else {
        GuestStep::Nothing
    }
}

/// What server egress does with a flow it found, for a segment the server
/// sent. The segment is redirected to the guest whichever it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerStep {
    /// A RST: remove the flow (`flows_reset`).
    Reset,
    /// Both FINs have now been seen: remove the flow (`flows_closed`). This
    /// segment is the server's last of the connection.
    Close,
    /// The server's first FIN, the guest's not seen yet: mark `server_fin`.
    MarkFin,
    /// Nothing to change.
    Keep,
}

/// The close rules for a server segment with TCP `flags` on a flow whose
/// marks are `guest_fin` and `server_fin`.
pub const fn server_step(flags: u8, guest_fin: bool, server_fin: bool) -> ServerStep {
    use tcp_flags::*;
    let fin = flags & FIN != 0;
    if flags & RST != 0 {
        ServerStep::Reset
    } else if guest_fin && (server_fin || fin) {
        // The server's FIN (now or before) and the guest's: this segment
        // completes the close. (A guest FIN marked just after egress read the
        // marks is seen on the server's ACK of it, which always follows.)
        ServerStep::Close
    } else if fin && !server_fin {
        ServerStep::MarkFin
    } else {
        ServerStep::Keep
    }
}

/// `CONFIG[0]`: where caught requests go. Written by the daemon at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// Address the server listens on (on the server end of the veth pair).
    pub server_addr: [u8; 4],
    /// Port the server listens on, network byte order.
    pub server_port_be: u16,
    /// MAC of the server end, so the redirected frame is addressed to the host.
    pub server_mac: [u8; 6],
    /// The entry end of the veth pair, in the host's namespace: caught
    /// requests are handed straight to the ingress of its peer, the server
    /// end (`bpf_redirect_peer`).
    pub redirect_ifindex: u32,
    /// Non-zero once the daemon has filled this in.
    pub ready: u32,
    /// New connections one port may open per second; SYNs over it are dropped.
    pub syn_rate_per_port: u32,
    /// The IPv4 address guests ask (`METADATA_ADDR` by default).
    pub metadata_addr: [u8; 4],
    /// Bit `i` set: `metadata_addrs6[i]` is served. Zero: IPv6 is not
    /// served at all (its traffic passes untouched).
    pub served6: u32,
    /// The IPv6 addresses guests ask (`DEFAULT_METADATA_ADDRS6` by default).
    pub metadata_addrs6: [[u8; 16]; METADATA_ADDRS6],
}

// The eBPF programs read IPv6 addresses in map values as 32-bit words
// (sixteen byte loads each would exhaust its registers): these fields must
// stay at 4-byte offsets of 4-byte aligned values.
const _: () = assert!(core::mem::offset_of!(DatapathConfig, metadata_addrs6) % 4 == 0);
const _: () = assert!(core::mem::offset_of!(FlowEntry, guest_addr) % 4 == 0);
const _: () = assert!(core::mem::align_of::<DatapathConfig>() >= 4);
const _: () = assert!(core::mem::align_of::<FlowEntry>() >= 4);

/// The rows of `COUNTERS`: each program counts in the row of the address
/// family of the packet it decided on. IPv4's row also has what is neither
/// (ARP, other ethertypes, tagged frames that do not carry IPv6, and the
/// server end's traffic that is no guest's reply).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Ipv4 = 0,
    Ipv6 = 1,
}

impl Family {
    /// How many rows `COUNTERS` has.
    pub const COUNT: usize = 2;
    pub const ALL: [Family; Family::COUNT] = [Family::Ipv4, Family::Ipv6];

    /// The row's name, as `status` shows it.
    pub const fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// `COUNTERS[family]`, per CPU: one field for each decision the programs
/// take, a row per address family (see [`Family`]). Userspace sums the
/// CPUs; `bpftool map dump` shows them by name, key 0 for IPv4 and key 1
/// for IPv6. A counter's text speaks of IPv4; in the IPv6 row it counts
/// the same decision for IPv6 (e.g. `caught`: TCP to an IPv6 metadata
/// address, port 80).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Tap ingress: TCP to 169.254.169.254:80 redirected to the server.
    pub caught: u64,
    /// Tap ingress: ARP request for 169.254.169.254 answered by the program.
    pub arp_answered: u64,
    /// Tap ingress: not metadata traffic, passed untouched.
    pub passed: u64,
    /// Tap ingress: metadata traffic on a tap that is not (or no longer) registered, passed untouched.
    pub passed_unregistered: u64,
    /// Tap ingress: a fragment addressed to the metadata service (the port is unknown), dropped.
    pub dropped_fragment: u64,
    /// Tap ingress: a truncated or inconsistent header addressed to the metadata service, dropped.
    pub dropped_malformed: u64,
    /// Tap ingress: the daemon has not configured the datapath yet, dropped.
    pub dropped_not_ready: u64,
    /// Tap ingress: a SYN over the port's per-second budget, dropped.
    pub dropped_syn_budget: u64,
    /// Either direction: a packet rewrite helper failed, dropped.
    pub dropped_rewrite: u64,
    /// Server egress: a reply translated and sent back out of its tap.
    pub replied: u64,
    /// Server egress: a segment that carries data or a SYN for an identity
    /// address with no remembered flow, dropped (the guest loses it: the
    /// flow was evicted, or the connection was already closed or reset).
    pub dropped_no_flow: u64,
    /// Server egress: not a reply from the server, passed untouched.
    pub egress_passed: u64,
    /// Server egress: a segment with no data and no SYN (an ACK, FIN or RST)
    /// with no remembered flow, dropped. Almost always the tail of a
    /// connection whose flow is already gone, e.g. the server re-ACKing a
    /// retransmitted guest FIN from TIME_WAIT; the guest has closed by then.
    /// (Before flows were removed at close, these counted as `dropped_no_flow`.)
    pub dropped_no_flow_late: u64,
    /// Server egress: a flow removed because both FINs have been seen.
    pub flows_closed: u64,
    /// Either direction: a flow removed because of a RST from the guest or the server.
    pub flows_reset: u64,
    /// Tap ingress: a VLAN-tagged frame (802.1Q or 802.1ad, the tag in the
    /// frame or already taken into the skb's metadata by the kernel), passed
    /// untouched. A trunk's subport traffic is not ours to catch.
    pub passed_vlan: u64,
    /// Tap ingress: TCP to 169.254.169.254:80 from a registered tap carrying
    /// IPv4 options (IHL > 5), dropped. Guests never send them; served, a
    /// Record Route would collect the server's address.
    pub dropped_ip_options: u64,
    /// Tap ingress: a SYN from a registered port whose flow table is missing
    /// (the daemon is attaching the port) or refused the entry, dropped; the
    /// guest's TCP retries.
    pub dropped_flow_table: u64,
    /// Tap ingress (IPv6): a Neighbour Solicitation for an IPv6 metadata
    /// address from a registered tap, answered with a Neighbour
    /// Advertisement out of the same tap (never forwarded to the bridge).
    pub nd_answered: u64,
    /// Tap ingress (IPv6): a packet to a metadata address from a registered
    /// tap whose next header is not TCP (an extension header, UDP, ICMPv6
    /// other than a Neighbour Solicitation), dropped. Fragments count as
    /// `dropped_fragment`.
    pub dropped_next_header: u64,
    /// Tap ingress (IPv6): metadata traffic on a registered tap whose MTU is
    /// under IPv6's minimum of 1280, passed untouched (not served).
    pub passed_small_mtu: u64,
}

/// One counter of [`Counters`]: what a program decided for a packet (a
/// verdict), or something that happened to a flow on the way (an event).
/// The discriminant is the field's position in `Counters`, so the programs
/// count with an index into the struct seen as an array, in one place.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Caught = 0,
    ArpAnswered,
    Passed,
    PassedUnregistered,
    DroppedFragment,
    DroppedMalformed,
    DroppedNotReady,
    DroppedSynBudget,
    DroppedRewrite,
    Replied,
    DroppedNoFlow,
    EgressPassed,
    DroppedNoFlowLate,
    FlowsClosed,
    FlowsReset,
    PassedVlan,
    DroppedIpOptions,
    DroppedFlowTable,
    NdAnswered,
    DroppedNextHeader,
    PassedSmallMtu,
}

impl Counter {
    /// How many counters there are (fields of `Counters`).
    pub const COUNT: usize = 21;

    /// Every counter, in field order.
    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::Caught,
        Counter::ArpAnswered,
        Counter::Passed,
        Counter::PassedUnregistered,
        Counter::DroppedFragment,
        Counter::DroppedMalformed,
        Counter::DroppedNotReady,
        Counter::DroppedSynBudget,
        Counter::DroppedRewrite,
        Counter::Replied,
        Counter::DroppedNoFlow,
        Counter::EgressPassed,
        Counter::DroppedNoFlowLate,
        Counter::FlowsClosed,
        Counter::FlowsReset,
        Counter::PassedVlan,
        Counter::DroppedIpOptions,
        Counter::DroppedFlowTable,
        Counter::NdAnswered,
        Counter::DroppedNextHeader,
        Counter::PassedSmallMtu,
    ];

    /// The field's name, as `status` and bpftool show it.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Caught => "caught",
            Counter::ArpAnswered => "arp_answered",
            Counter::Passed => "passed",
            Counter::PassedUnregistered => "passed_unregistered",
            Counter::DroppedFragment => "dropped_fragment",
            Counter::DroppedMalformed => "dropped_malformed",
            Counter::DroppedNotReady => "dropped_not_ready",
            Counter::DroppedSynBudget => "dropped_syn_budget",
            Counter::DroppedRewrite => "dropped_rewrite",
            Counter::Replied => "replied",
            Counter::DroppedNoFlow => "dropped_no_flow",
            Counter::EgressPassed => "egress_passed",
            Counter::DroppedNoFlowLate => "dropped_no_flow_late",
            Counter::FlowsClosed => "flows_closed",
            Counter::FlowsReset => "flows_reset",
            Counter::PassedVlan => "passed_vlan",
            Counter::DroppedIpOptions => "dropped_ip_options",
            Counter::DroppedFlowTable => "dropped_flow_table",
            Counter::NdAnswered => "nd_answered",
            Counter::DroppedNextHeader => "dropped_next_header",
            Counter::PassedSmallMtu => "passed_small_mtu",
        }
    }

    /// True for the counters that record a packet's verdict: every run of
    /// either program counts exactly one of them. The others count events on
    /// flows, next to a verdict.
    pub const fn is_verdict(self) -> bool {
        !matches!(self, Counter::FlowsClosed | Counter::FlowsReset)
    }
}

// `Counters` is exactly `Counter::COUNT` u64s, so it can be seen as an array.
const _: () = assert!(core::mem::size_of::<Counters>() == Counter::COUNT * 8);
const _: () = assert!(core::mem::align_of::<Counters>() == core::mem::align_of::<u64>());

impl Counters {
    /// The counters as an array, indexed by `Counter as usize`.
    pub fn as_array(&self) -> &[u64; Counter::COUNT] {
        // SAFETY: #[repr(C)] struct of exactly Counter::COUNT u64 fields and
        // nothing else (asserted above), so it has the array's layout.
        unsafe { &*(self as *const Counters as *const [u64; Counter::COUNT]) }
    }

    /// Mutable counterpart of [`Counters::as_array`].
    pub fn as_array_mut(&mut self) -> &mut [u64; Counter::COUNT] {
        // SAFETY: as in `as_array`.
        unsafe { &mut *(self as *mut Counters as *mut [u64; Counter::COUNT]) }
    }

    /// One counter's value.
    pub fn get(&self, counter: Counter) -> u64 {
        self.as_array()[counter as usize]
    }

    /// Each counter with its name, in declaration order (for status output).
    pub fn fields(&self) -> [(&'static str, u64); Counter::COUNT] {
        let values = self.as_array();
        Counter::ALL.map(|counter| (counter.name(), values[counter as usize]))
    }

    /// Adds another CPU's copy into this one.
    pub fn accumulate(&mut self, other: &Counters) {
        for (mine, theirs) in self.as_array_mut().iter_mut().zip(other.as_array()) {
            *mine += theirs;
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], Copy, contain no pointers, and have
    // explicit padding so every byte pattern is a valid value.
    unsafe impl aya::Pod for super::PortEntry {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::Counters {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn map_values_are_multiples_of_eight_bytes() {
        assert_eq!(size_of::<FlowKey>(), 8);
        assert_eq!(size_of::<FlowEntry>(), 40);
        assert_eq!(size_of::<PortEntry>(), 32);
        assert_eq!(size_of::<DatapathConfig>(), 64);
        assert_eq!(size_of::<DatapathConfig>() % 8, 0);
        assert_eq!(size_of::<Counters>() % 8, 0);
        assert!(align_of::<FlowEntry>() <= 8);
    }

    #[test]
    fn counter_fields_cover_every_counter_and_accumulate_sums_them() {
        let n = Counters::default().fields().len();
        assert_eq!(n * 8, size_of::<Counters>(), "fields() misses a counter");
        // Counters is n u64s in declaration order: give each its index + 1.
        let mut one = Counters::default();
        // SAFETY: #[repr(C)] struct of n u64 fields and nothing else (checked above).
        let slots =
            unsafe { core::slice::from_raw_parts_mut(&mut one as *mut Counters as *mut u64, n) };
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = i as u64 + 1;
        }
        let mut total = Counters::default();
        total.accumulate(&one);
        total.accumulate(&one);
        for (i, (name, value)) in total.fields().into_iter().enumerate() {
            assert_eq!(
                value,
                2 * (i as u64 + 1),
                "{name} is summed or listed out of order"
            );
        }
        let mut names: std::vec::Vec<&str> = one.fields().iter().map(|(name, _)| *name).collect();
        assert_eq!(names.len(), Counter::ALL.len());
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate counter names");
    }

    #[test]
    fn each_counter_indexes_its_own_field() {
        use core::mem::offset_of;
        let offsets = [
            (Counter::Caught, offset_of!(Counters, caught)),
            (Counter::ArpAnswered, offset_of!(Counters, arp_answered)),
            (Counter::Passed, offset_of!(Counters, passed)),
            (
                Counter::PassedUnregistered,
                offset_of!(Counters, passed_unregistered),
            ),
            (
                Counter::DroppedFragment,
                offset_of!(Counters, dropped_fragment),
            ),
            (
                Counter::DroppedMalformed,
                offset_of!(Counters, dropped_malformed),
            ),
            (
                Counter::DroppedNotReady,
                offset_of!(Counters, dropped_not_ready),
            ),
            (
                Counter::DroppedSynBudget,
                offset_of!(Counters, dropped_syn_budget),
            ),
            (
                Counter::DroppedRewrite,
                offset_of!(Counters, dropped_rewrite),
            ),
            (Counter::Replied, offset_of!(Counters, replied)),
            (
                Counter::DroppedNoFlow,
                offset_of!(Counters, dropped_no_flow),
            ),
            (Counter::EgressPassed, offset_of!(Counters, egress_passed)),
            (
                Counter::DroppedNoFlowLate,
                offset_of!(Counters, dropped_no_flow_late),
            ),
            (Counter::FlowsClosed, offset_of!(Counters, flows_closed)),
            (Counter::FlowsReset, offset_of!(Counters, flows_reset)),
            (Counter::PassedVlan, offset_of!(Counters, passed_vlan)),
            (
                Counter::DroppedIpOptions,
                offset_of!(Counters, dropped_ip_options),
            ),
            (
                Counter::DroppedFlowTable,
                offset_of!(Counters, dropped_flow_table),
            ),
            (Counter::NdAnswered, offset_of!(Counters, nd_answered)),
            (
                Counter::DroppedNextHeader,
                offset_of!(Counters, dropped_next_header),
            ),
            (
                Counter::PassedSmallMtu,
                offset_of!(Counters, passed_small_mtu),
            ),
        ];
        assert_eq!(offsets.len(), Counter::COUNT);
        for (i, (counter, offset)) in offsets.into_iter().enumerate() {
            assert_eq!(Counter::ALL[i], counter, "ALL out of order at {i}");
            assert_eq!(counter as usize * 8, offset, "{counter:?}");
            let mut counters = Counters::default();
            counters.as_array_mut()[counter as usize] = 7;
            assert_eq!(counters.get(counter), 7);
            // The name is the field's own (Rust's names, as in the struct).
            let field = counters.fields()[i];
            assert_eq!(field, (counter.name(), 7));
        }
    }

    #[test]
    fn guest_segments_open_mark_or_reset_their_flow() {
        use tcp_flags::*;
        let cases = [
            (SYN, GuestStep::Open),
            // SYN without ACK opens whatever else is set.
            (SYN | FIN, GuestStep::Open),
            (SYN | RST, GuestStep::Open),
            (SYN | ACK, GuestStep::Nothing),
            (ACK, GuestStep::Nothing),
            (0, GuestStep::Nothing),
            (ACK | 0x08, GuestStep::Nothing),
            (FIN, GuestStep::MarkFin),
            (FIN | ACK, GuestStep::MarkFin),
            (RST, GuestStep::Reset),
            (RST | ACK, GuestStep::Reset),
            (RST | FIN | ACK, GuestStep::Reset),
            (SYN | ACK | RST, GuestStep::Reset),
            (SYN | ACK | FIN, GuestStep::MarkFin),
        ];
        for (flags, step) in cases {
            assert_eq!(guest_step(flags), step, "flags {flags:#04x}");
        }
    }

    #[test]
    fn server_segments_mark_close_or_reset_their_flow() {
        use tcp_flags::*;
        // (flags, guest_fin, server_fin) -> step
        let cases = [
            (ACK, false, false, ServerStep::Keep),
            (SYN | ACK, false, false, ServerStep::Keep),
            (FIN | ACK, false, false, ServerStep::MarkFin),
            (FIN | ACK, false, true, ServerStep::Keep),
            (ACK, false, true, ServerStep::Keep),
            // The guest's FIN seen: the server's ACK of it closes only once
            // the server's FIN has passed too.
            (ACK, true, false, ServerStep::Keep),
            (ACK, true, true, ServerStep::Close),
            (FIN | ACK, true, false, ServerStep::Close),
            (FIN | ACK, true, true, ServerStep::Close),
            (RST, false, false, ServerStep::Reset),
            (RST | ACK, true, true, ServerStep::Reset),
            (RST | FIN, true, false, ServerStep::Reset),
        ];
        for (flags, guest_fin, server_fin, step) in cases {
            assert_eq!(
                server_step(flags, guest_fin, server_fin),
                step,
                "flags {flags:#04x} guest_fin {guest_fin} server_fin {server_fin}"
            );
        }
    }

    /// A flow's life through both programs' rules, one segment at a time:
    /// (from the guest?, flags) -> whether the flow exists afterwards.
    fn replay(segments: &[(bool, u8)]) -> std::vec::Vec<bool> {
        let mut flow: Option<(bool, bool)> = None;
        let mut alive = std::vec::Vec::new();
        for &(guest, flags) in segments {
            if guest {
                match guest_step(flags) {
                    GuestStep::Open => flow = Some((false, false)),
                    GuestStep::Reset => flow = None,
                    GuestStep::MarkFin => {
                        if let Some(marks) = flow.as_mut() {
                            marks.0 = true;
                        }
                    }
                    GuestStep::Nothing => {}
                }
            } else if let Some((guest_fin, server_fin)) = flow {
                match server_step(flags, guest_fin, server_fin) {
                    ServerStep::Reset | ServerStep::Close => flow = None,
                    ServerStep::MarkFin => flow = Some((guest_fin, true)),
                    ServerStep::Keep => {}
                }
            }
            alive.push(flow.is_some());
        }
        alive
    }

    #[test]
    fn connections_end_with_their_flow_removed_by_the_last_segment() {
        use tcp_flags::*;
        const G: bool = true;
        const S: bool = false;
        let handshake = [(G, SYN), (S, SYN | ACK), (G, ACK), (G, ACK), (S, ACK)];
        // The server closes first (Connection: close): its ACK of the
        // guest's FIN is the last segment that needs the flow.
        let server_first = [(S, FIN | ACK), (G, ACK), (G, FIN | ACK), (S, ACK)];
        // The guest closes first (keep-alive client hanging up): the
        // server's FIN is the last.
        let guest_first = [(G, FIN | ACK), (S, ACK), (S, FIN | ACK), (G, ACK)];
        // Both at once: each FIN crosses the other.
        let simultaneous = [(G, FIN | ACK), (S, FIN | ACK), (S, ACK), (G, ACK)];
        for (name, close, removed_at) in [
            ("server first", &server_first, 3),
            ("guest first", &guest_first, 2),
            ("simultaneous", &simultaneous, 1),
        ] {
            let segments = [&handshake[..], &close[..]].concat();
            let alive = replay(&segments);
            for (i, alive) in alive.iter().enumerate() {
                let expected = i < handshake.len() + removed_at;
                assert_eq!(*alive, expected, "{name}: after segment {i}");
            }
        }
        // A RST from either side removes the flow at once.
        for rst in [(G, RST), (S, RST | ACK)] {
            let segments = [&handshake[..], &[rst][..]].concat();
            assert_eq!(replay(&segments).last(), Some(&false), "{rst:?}");
        }
        // A new SYN from the same port clears an old connection's marks: the
        // server's FIN on the new connection does not close it.
        let reuse = [
            (G, SYN),
            (G, FIN | ACK),
            (G, SYN),
            (S, SYN | ACK),
            (S, FIN | ACK),
        ];
        assert_eq!(replay(&reuse).last(), Some(&true));
        // Segments for a flow already gone change nothing.
        assert_eq!(replay(&[(G, FIN | ACK), (S, ACK), (G, RST)]), [false; 3]);
    }
}
