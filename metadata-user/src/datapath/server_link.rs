//! The server's veth pair, across two namespaces.
//!
//! ```text
//!  host namespace                      server namespace (server_netns)
//!  tap --redirect_peer-----------------> server end: server_addr/32,
//!   ^                entry end ======= server end  identity range via
//!   |                (no address)      next_hop onlink; listener on
//!   |                                  server_addr:port
//!   +--redirect-- [return program on the entry end's TCX ingress]
//! ```
//!
//! Caught requests are handed, through the *entry* end (which stays in the
//! host's namespace with no address), straight to the ingress of its peer,
//! the *server* end (`bpf_redirect_peer`), the only interface of the
//! server's namespace besides its loopback. The
//! server's replies cross back and arrive on the entry end, whose ingress
//! program rewrites them and redirects them to their tap (the program cannot
//! run on the server end: a redirect resolves the tap's ifindex in the
//! namespace the packet is in). So the host's namespace holds neither the
//! server's address nor a route for the identity range, and no bridge can
//! reach the server: the host answers no ARP for those addresses and routes
//! nothing to them.
//!
//! Both ends have ARP off: replies to identity addresses never wait for
//! neighbour resolution (the return program rewrites the MACs anyway). The
//! range is routed through one on-link next hop, so all replies share a
//! single neighbour entry (see `IdentityPlan::next_hop`).
use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, bail};
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkInfo, LinkMessage},
};
use tracing::{info, warn};

use super::{
    netdev::{link_by_name, mac_of},
    server_netns::ServerNetns,
};

/// MTU of the veth pair: large enough that a frame from any tap (jumbo
/// frames included) is never dropped on the way to the server. TCP segment
/// sizes stay bounded by the guest's own MSS.
const SERVER_LINK_MTU: u32 = 65_535;

/// Names and addresses of the server's veth pair.
#[derive(Clone, Debug)]
pub struct ServerLinkPlan {
    /// In the server's namespace; holds `server_addr`, the server listens here.
    pub server_ifname: String,
    /// In the host's namespace; caught requests are redirected to its peer.
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
    /// The entry end's ifindex in the host's namespace: whose peer caught
    /// requests are redirected to, and where the return program runs.
    pub entry_ifindex: u32,
    /// The server end's MAC, the destination of redirected requests.
    pub server_mac: [u8; 6],
}

/// Creates (or adopts) the pair, addresses the server end and routes the
/// identity range to it inside `netns`. Idempotent: a restart finds
/// everything in place. `host` talks to the host's namespace, `inside` to
/// the server's.
///
/// A pair that a previous version left entirely in the host's namespace
/// (with the server's address there) is deleted first and made anew.
pub async fn ensure_server_link(
    host: &Handle,
    netns: &ServerNetns,
    inside: &Handle,
    plan: &ServerLinkPlan,
) -> anyhow::Result<ServerLink> {
    remove_pair_left_in_host(host, plan).await?;
    let (entry, server) = match (
        link_by_name(host, &plan.entry_ifname).await?,
        link_by_name(inside, &plan.server_ifname).await?,
    ) {
        (Some(entry), Some(server)) if are_peers_across_namespaces(&entry, &server) => {
            (entry, server)
        }
        (Some(_), _) => bail!(
            "interface {} exists in the host namespace but is not the peer of {} in network \
             namespace {}; delete it or choose another --entry-ifname",
            plan.entry_ifname,
            plan.server_ifname,
            netns.name()
        ),
        // A veth end never outlives its peer: a server end without our
        // entry end is paired with another daemon's (two daemons given the
        // same namespace), which must not be taken over.
        (None, Some(_)) => bail!(
            "network namespace {} already has an interface {} whose peer is not {} in this \
             namespace (another daemon's?); choose another --server-netns",
            netns.name(),
            plan.server_ifname,
            plan.entry_ifname
        ),
        (None, None) => {
            create_pair(host, netns, plan).await?;
            let entry = link_by_name(host, &plan.entry_ifname)
                .await?
                .with_context(|| format!("{} vanished", plan.entry_ifname))?;
            let server = link_by_name(inside, &plan.server_ifname)
                .await?
                .with_context(|| {
                    format!(
                        "{} is not in namespace {}",
                        plan.server_ifname,
                        netns.name()
                    )
                })?;
            (entry, server)
        }
    };

    // No IPv6 chatter (router solicitations, DAD) on a pair that only carries
    // redirected IPv4. Best effort: IPv6 may be disabled on the host. The
    // server's side is written from inside its namespace (/proc/sys/net
    // shows the namespace of the thread that opens it).
    disable_ipv6(&plan.entry_ifname);
    let server_ifname = plan.server_ifname.clone();
    netns.run(move || {
        for ifname in ["all", "default", &server_ifname] {
            disable_ipv6(ifname);
        }
    })?;

    for (handle, index) in [(host, entry.header.index), (inside, server.header.index)] {
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .mtu(SERVER_LINK_MTU)
                    .arp(false)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .with_context(|| format!("configuring interface index {index}"))?;
    }
    configure_server_end(inside, server.header.index, plan).await?;

    Ok(ServerLink {
        entry_ifindex: entry.header.index,
        server_mac: mac_of(&server)
            .with_context(|| format!("{} has no MAC", plan.server_ifname))?,
    })
}

/// The server's address and the identity range's route, inside its namespace.
async fn configure_server_end(
    inside: &Handle,
    server_index: u32,
    plan: &ServerLinkPlan,
) -> anyhow::Result<()> {
    if let Some(lo) = link_by_name(inside, "lo").await? {
        inside
            .link()
            .set(LinkUnspec::new_with_index(lo.header.index).up().build())
            .execute()
            .await
            .context("bringing up lo in the server namespace")?;
    }
    inside
        .address()
        .add(server_index, IpAddr::V4(plan.server_addr), 32)
        .replace()
        .execute()
        .await
        .with_context(|| format!("adding {} to {}", plan.server_addr, plan.server_ifname))?;
    for (net, prefix) in plan.identity_nets {
        inside
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(net, prefix)
                    .output_interface(server_index)
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
    Ok(())
}

/// `ip link add ENTRY type veth peer name SERVER netns NETNS`: the server
/// end is born in its namespace and never appears in the host's.
async fn create_pair(
    host: &Handle,
    netns: &ServerNetns,
    plan: &ServerLinkPlan,
) -> anyhow::Result<()> {
    let mut message = LinkVeth::new(&plan.entry_ifname, &plan.server_ifname).build();
    let peer = message
        .attributes
        .iter_mut()
        .find_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => infos.iter_mut().find_map(|info| match info {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) => Some(peer),
                _ => None,
            }),
            _ => None,
        })
        .context("the veth request has no peer")?;
    peer.attributes
        .push(LinkAttribute::NetNsFd(netns.fd().as_raw_fd()));
    host.link().add(message).execute().await.with_context(|| {
        format!(
            "creating veth pair {} / {} (in network namespace {})",
            plan.entry_ifname,
            plan.server_ifname,
            netns.name()
        )
    })?;
    info!(
        entry = plan.entry_ifname,
        server = plan.server_ifname,
        netns = netns.name(),
        "server veth pair created"
    );
    Ok(())
}

/// Deletes the pair as an earlier version left it: both ends in the host's
/// namespace, the server's address and the identity route with them. A
/// device of that name that is not the entry end's peer is someone else's
/// and is left alone.
async fn remove_pair_left_in_host(host: &Handle, plan: &ServerLinkPlan) -> anyhow::Result<()> {
    let Some(server) = link_by_name(host, &plan.server_ifname).await? else {
        return Ok(());
    };
    let Some(entry) = link_by_name(host, &plan.entry_ifname).await? else {
        warn!(
            ifname = plan.server_ifname,
            "an interface of the server end's name is in the host namespace, without our entry \
             end; left alone"
        );
        return Ok(());
    };
    if !are_peers_in_one_namespace(&entry, &server) {
        return Ok(());
    }
    host.link()
        .del(server.header.index)
        .execute()
        .await
        .with_context(|| {
            format!(
                "deleting the veth pair {} / {} a previous version left in the host namespace",
                plan.entry_ifname, plan.server_ifname
            )
        })?;
    info!(
        entry = plan.entry_ifname,
        server = plan.server_ifname,
        "removed the server's veth pair from the host namespace, where a previous version \
         kept it (its address and route went with it); the server moves into its own namespace"
    );
    Ok(())
}

/// The veth peer's ifindex (IFLA_LINK), and whether that peer is in another
/// namespace (IFLA_LINK_NETNSID present).
fn peer_of(link: &LinkMessage) -> (Option<u32>, bool) {
    let mut peer = None;
    let mut elsewhere = false;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::Link(index) => peer = Some(*index),
            LinkAttribute::LinkNetNsId(_) => elsewhere = true,
            _ => {}
        }
    }
    (peer, elsewhere)
}

fn are_peers_across_namespaces(entry: &LinkMessage, server: &LinkMessage) -> bool {
    let (entry_peer, entry_elsewhere) = peer_of(entry);
    let (server_peer, server_elsewhere) = peer_of(server);
    entry_elsewhere
        && server_elsewhere
        && entry_peer == Some(server.header.index)
        && server_peer == Some(entry.header.index)
}

fn are_peers_in_one_namespace(entry: &LinkMessage, server: &LinkMessage) -> bool {
    let (entry_peer, entry_elsewhere) = peer_of(entry);
    let (server_peer, server_elsewhere) = peer_of(server);
    !entry_elsewhere
        && !server_elsewhere
        && entry_peer == Some(server.header.index)
        && server_peer == Some(entry.header.index)
}

fn disable_ipv6(ifname: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
        "1",
    );
}

/// Deletes the pair (the server end's address and route go with it).
pub async fn delete_server_link(host: &Handle, entry_ifname: &str) -> anyhow::Result<()> {
    if let Some(link) = link_by_name(host, entry_ifname).await? {
        host.link().del(link.header.index).execute().await?;
    }
    Ok(())
}
