//! Network devices over rtnetlink: a request handle for a namespace, a
//! stream of tap appear/disappear events, and the lookups the rest of the
//! datapath shares (the server's veth pair itself is `server_link`).
use anyhow::{Context as _, bail};
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        link::{LinkAttribute, LinkMessage},
    },
};

use super::server_netns::ServerNetns;

/// Opens an rtnetlink request handle whose connection runs on the current runtime.
pub fn connect() -> anyhow::Result<Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// [`connect`] for the namespace `netns`: the netlink socket is made by a
/// thread inside it, so every request on the handle acts there, whichever
/// thread sends it.
pub fn connect_in(netns: &ServerNetns) -> anyhow::Result<Handle> {
    let runtime = tokio::runtime::Handle::current();
    netns.run(move || {
        let _entered = runtime.enter();
        connect()
    })?
}

/// The link named `name` in the namespace `handle` talks to.
pub(super) async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> anyhow::Result<Option<LinkMessage>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link),
        // The kernel answers "no such device" as an error.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
    }
}

pub(super) fn mac_of(link: &LinkMessage) -> Option<[u8; 6]> {
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
    // Each message is reduced to its name and index as it arrives: a whole
    // parsed dump held at once (every attribute of every link) took 300 MB
    // at the peak on a host with 20,000 interfaces.
    handle
        .link()
        .get()
        .execute()
        .try_filter_map(|link| async move {
            Ok(name_of(&link).map(|ifname| LinkEvent::Present {
                ifname: ifname.to_string(),
                ifindex: link.header.index,
            }))
        })
        .try_collect()
        .await
        .context("listing interfaces")
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
