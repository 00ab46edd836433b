//! The host devices the datapath needs, over rtnetlink: the veth pair the
//! server sits behind, and a stream of tap appear/disappear events.
//!
//! Caught requests are sent out of the *entry* end of the pair and arrive on
//! the *server* end, which holds the server's address and a route for the
//! identity range. The server end has ARP off: replies to identity addresses
//! never wait for neighbour resolution (the egress program rewrites the MACs
//! anyway and sends the frame to the tap). The range is routed through one
//! on-link next hop, so all replies share a single neighbour entry (see
//! `IdentityPlan::next_hop`).
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, bail};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, MulticastGroup, RouteMessageBuilder,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
};

/// MTU of the veth pair: large enough that a frame from any tap (jumbo
/// frames included) is never dropped on the way to the server. TCP segment
/// sizes stay bounded by the guest's own MSS.
const SERVER_LINK_MTU: u32 = 65_535;

/// Names and addresses of the server's veth pair.
#[derive(Clone, Debug)]
pub struct ServerLinkPlan {
    /// Holds `server_addr`; the server listens here.
    pub server_ifname: String,
    /// Caught packets are redirected out of this end.
    pub entry_ifname: String,
    pub server_addr: Ipv4Addr,
    /// The identity ranges (one per lane), routed to the server end...
    pub identity_nets: [(Ipv4Addr, u8); metadata_ebpf::IDENTITY_LANES],
    /// ...through this on-link gateway.
    pub next_hop: Ipv4Addr,
}

/// The pair as it exists in the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLink {
    pub server_ifindex: u32,
    pub entry_ifindex: u32,
    pub server_mac: [u8; 6],
    /// False when the pair was already there (a restart): the pinned links on
    /// it may still be in use.
    pub created: bool,
}

/// Opens an rtnetlink request handle whose connection runs on the current runtime.
pub fn connect() -> anyhow::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Creates (or adopts) the veth pair, addresses it and routes the identity
/// range to it. Idempotent: a restart finds everything in place.
pub async fn ensure_server_link(
    handle: &Handle,
    plan: &ServerLinkPlan,
) -> anyhow::Result<ServerLink> {
    let mut created = false;
    if link_by_name(handle, &plan.server_ifname).await?.is_none() {
        if link_by_name(handle, &plan.entry_ifname).await?.is_some() {
            bail!(
                "interface {} exists without its peer {}; delete it or choose other names",
                plan.entry_ifname,
                plan.server_ifname
            );
        }
        handle
            .link()
            .add(LinkVeth::new(&plan.server_ifname, &plan.entry_ifname).build())
            .execute()
            .await
            .with_context(|| {
                format!(
                    "creating veth pair {}/{}",
                    plan.server_ifname, plan.entry_ifname
                )
            })?;
        created = true;
    }
    let server = link_by_name(handle, &plan.server_ifname)
        .await?
        .with_context(|| format!("{} vanished", plan.server_ifname))?;
    let entry = link_by_name(handle, &plan.entry_ifname)
        .await?
        .with_context(|| {
            format!(
                "{} is not the peer of {}",
                plan.entry_ifname, plan.server_ifname
            )
        })?;

    // No IPv6 chatter (router solicitations, DAD) on a pair that only carries
    // redirected IPv4. Best effort: IPv6 may be disabled on the host.
    for ifname in [&plan.server_ifname, &plan.entry_ifname] {
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
            "1",
        );
    }
    for (index, arp) in [(server.header.index, false), (entry.header.index, true)] {
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(SERVER_LINK_MTU)
                    .arp(arp)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("configuring interface index {index}"))?;
    }
    handle
        .address()
        .add(server.header.index, IpAddr::V4(plan.server_addr), 32)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding {} to {}", plan.server_addr, plan.server_ifname))?;
    for (net, prefix) in plan.identity_nets {
        handle
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(net, prefix)
                    .output_interface(server.header.index)
                    .gateway(plan.next_hop)
                    .onlink()
                    .build(),
            )
            .replace()
            .execute()
            .await
            .with_context(|| {
                format!(
                    "routing {net}/{prefix} via {} to {}",
                    plan.next_hop, plan.server_ifname
                )
            })?;
    }

    Ok(ServerLink {
        server_ifindex: server.header.index,
        entry_ifindex: entry.header.index,
        server_mac: mac_of(&server)
            .with_context(|| format!("{} has no MAC", plan.server_ifname))?,
        created,
    })
}

/// Deletes the veth pair (its address and route go with it).
pub async fn delete_server_link(handle: &Handle, server_ifname: &str) -> anyhow::Result<()> {
    if let Some(link) = link_by_name(handle, server_ifname).await? {
        handle.link().del(link.header.index).execute().await?;
    }
    Ok(())
}

async fn link_by_name(handle: &Handle, name: &str) -> anyhow::Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        // The kernel answers "no such device" as an error.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
    }
}

fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(mac) => mac.as_slice().try_into().ok(),
        _ => None,
    })
}

fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// A notification about the device itself, not about its membership in a
/// bridge (AF_BRIDGE) or another family's view of it.
fn is_device_message(link: &LinkMessage) -> bool {
    link.header.interface_family == AddressFamily::Unspec
}

/// Something happened to a network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Appeared or changed (also sent for every existing link by `current_links`).
    Present {
        ifname: String,
        ifindex: u32,
    },
    Gone {
        ifname: String,
        ifindex: u32,
    },
    /// The kernel dropped events because the socket's buffer was full (a
    /// burst of taps appearing or going at once): what is known about the
    /// links may be stale, and they must be listed again.
    Lost,
}

/// Subscribes to link events. Subscribe before listing the current links so
/// nothing that happens in between is missed.
///
/// Only a device's own notifications count (family AF_UNSPEC). A bridge also
/// announces its ports, with family AF_BRIDGE, and its RTM_DELLINK when a tap
/// merely leaves the bridge would otherwise read as the tap being gone.
pub fn watch_links() -> anyhow::Result<impl Stream<Item = LinkEvent>> {
    let (connection, _handle, messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .context("subscribing to link events")?;
    tokio::spawn(connection);
    Ok(messages.filter_map(|(message, _)| async move {
        let message = match message.payload {
            NetlinkPayload::InnerMessage(message) => message,
            NetlinkPayload::Overrun(_) => return Some(LinkEvent::Lost),
            _ => return None,
        };
        match message {
            RouteNetlinkMessage::NewLink(link) if is_device_message(&link) => {
                Some(LinkEvent::Present {
                    ifname: name_of(&link)?.to_string(),
                    ifindex: link.header.index,
                })
            }
            RouteNetlinkMessage::DelLink(link) if is_device_message(&link) => {
                Some(LinkEvent::Gone {
                    ifname: name_of(&link)?.to_string(),
                    ifindex: link.header.index,
                })
            }
            _ => None,
        }
    }))
}

/// Every link that exists now, as `Present` events.
pub async fn current_links(handle: &Handle) -> anyhow::Result<Vec<LinkEvent>> {
    let links: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .context("listing interfaces")?;
    Ok(links
        .iter()
        .filter_map(|link| {
            Some(LinkEvent::Present {
                ifname: name_of(link)?.to_string(),
                ifindex: link.header.index,
            })
        })
        .collect())
}

/// The name of the interface with `ifindex`, from the kernel.
pub fn ifname_of(ifindex: u32) -> anyhow::Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        bail!(
            "no interface with index {ifindex}: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Ok(unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// The index of the interface named `ifname` now, from the kernel; `None`
/// when there is none.
pub fn ifindex_of(ifname: &str) -> Option<u32> {
    let name = std::ffi::CString::new(ifname).ok()?;
    // SAFETY: name is a NUL-terminated string that outlives the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (ifindex != 0).then_some(ifindex)
}
