//! The identity range and the server address must reach the server end
//! alone: a route elsewhere that is at least as specific (or a local
//! address on another device) takes some guests' requests or the replies
//! away. And rp_filter on the server end: strict mode drops requests whose
//! identity source does not route back through that end.
use std::net::Ipv4Addr;

use futures::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};

use super::Item;
use crate::{cli::settings::Settings, datapath::netdev};

/// The kernel's local table: addresses of this host, consulted first.
const LOCAL_TABLE: u32 = 255;

/// An IPv4 route as far as the check cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub oif: Option<u32>,
    pub table: u32,
    pub kind: RouteType,
}

impl Route {
    fn from_message(message: &RouteMessage) -> Option<Self> {
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut oif = None;
        let mut table = u32::from(message.header.table);
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(addr)) => dst = *addr,
                RouteAttribute::Destination(_) => return None,
                RouteAttribute::Oif(index) => oif = Some(*index),
                RouteAttribute::Table(id) => table = *id,
                _ => {}
            }
        }
        Some(Self {
            dst,
            prefix_len: message.header.destination_prefix_length,
            oif,
            table,
            kind: message.header.kind,
        })
    }

    fn describe(&self) -> String {
        let dev = self
            .oif
            .and_then(|index| netdev::ifname_of(index).ok())
            .map(|name| format!(" dev {name}"))
            .unwrap_or_default();
        let table = match self.table {
            LOCAL_TABLE => "local".to_owned(),
            254 => "main".to_owned(),
            id => id.to_string(),
        };
        format!(
            "{:?} {}/{}{dev} table {table}",
            self.kind, self.dst, self.prefix_len
        )
        .to_lowercase()
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let shorter = mask(a.1.min(b.1));
    u32::from(a.0) & shorter == u32::from(b.0) & shorter
}

/// The routes that would take traffic for `ours` somewhere other than the
/// server end (`server_ifindex`, if it exists yet): at least as specific,
/// or in the local table (addresses, which win over any route).
pub fn conflicts(
    routes: &[Route],
    ours: (Ipv4Addr, u8),
    server_ifindex: Option<u32>,
) -> Vec<&Route> {
    routes
        .iter()
        .filter(|route| route.oif.is_none() || route.oif != server_ifindex)
        .filter(|route| overlaps((route.dst, route.prefix_len), ours))
        .filter(|route| route.table == LOCAL_TABLE || route.prefix_len >= ours.1)
        .collect()
}

async fn ipv4_routes() -> anyhow::Result<Vec<Route>> {
    let handle = netdev::connect()?;
    // A dump: the kernel answers with every table.
    let messages: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await?;
    Ok(messages.iter().filter_map(Route::from_message).collect())
}

pub async fn items(settings: &Settings) -> Vec<Item> {
    const ROUTES: &str = "routes";
    let server_ifname = &settings.link.server_ifname;
    let server_ifindex = netdev::ifindex_of(server_ifname);
    let identity = (settings.identity.net, settings.identity.prefix_len);
    let server = (settings.identity.server_addr, 32);
    let routes = match ipv4_routes().await {
        Ok(routes) => routes,
        Err(err) => {
            return vec![Item::warn(ROUTES, format!("cannot list routes: {err:#}"))];
        }
    };
    let mut problems = Vec::new();
    for (what, range) in [("identity range", identity), ("server address", server)] {
        for route in conflicts(&routes, range, server_ifindex) {
            problems.push(format!(
                "the {what} {}/{} is also routed by `{}`",
                range.0,
                range.1,
                route.describe()
            ));
        }
    }
    let route_item = if problems.is_empty() {
        Item::ok(
            ROUTES,
            format!(
                "{}/{} and {} reach {server_ifname} alone{}",
                identity.0,
                identity.1,
                server.0,
                if server_ifindex.is_some() {
                    ""
                } else {
                    " (serve adds the routes when it creates the veth pair)"
                }
            ),
        )
    } else {
        Item::fail(
            ROUTES,
            problems.join("; "),
            "remove that route or address, or set identity_net/server_addr in the config file \
             to a range nothing else uses",
        )
    };
    let rp_filter = rp_filter_item(
        server_ifname,
        server_ifindex.is_some(),
        !problems.is_empty(),
    );
    vec![route_item, rp_filter]
}

fn sysctl(path: &str) -> Option<u8> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The kernel applies the larger of `all` and the interface's own value.
fn rp_filter_item(server_ifname: &str, link_exists: bool, routes_conflict: bool) -> Item {
    const NAME: &str = "rp_filter";
    let own = if link_exists {
        server_ifname
    } else {
        "default"
    };
    let all = sysctl("/proc/sys/net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let own_value = sysctl(&format!("/proc/sys/net/ipv4/conf/{own}/rp_filter")).unwrap_or(0);
    let effective = all.max(own_value);
    let mode = match effective {
        0 => "off",
        1 => "strict",
        _ => "loose",
    };
    let subject = if link_exists {
        server_ifname.to_owned()
    } else {
        format!("{server_ifname} (from conf/default, as it does not exist yet)")
    };
    if effective == 1 && routes_conflict {
        Item::fail(
            NAME,
            format!(
                "{mode} on {subject}: requests from identity addresses that do not route back \
                 through {server_ifname} are dropped, and some do not (see routes)"
            ),
            format!(
                "fix the routes, or sysctl -w net.ipv4.conf.{server_ifname}.rp_filter=2 \
                 (and net.ipv4.conf.all.rp_filter=2 if all is 1)"
            ),
        )
    } else {
        let why = match effective {
            0 => "no source check",
            1 => "passes, as the identity range routes back through it",
            _ => "passes, as the identity range is routed",
        };
        Item::ok(NAME, format!("{mode} ({effective}) on {subject}: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: [u8; 4], prefix_len: u8, oif: u32, table: u32) -> Route {
        Route {
            dst: dst.into(),
            prefix_len,
            oif: Some(oif),
            table,
            kind: RouteType::Unicast,
        }
    }

    #[test]
    fn only_as_specific_routes_elsewhere_and_foreign_addresses_conflict() {
        let ours = (Ipv4Addr::new(240, 1, 0, 0), 16);
        let server_if = 7;
        let routes = vec![
            route([0, 0, 0, 0], 0, 2, 254),    // default route: shadowed by ours
            route([240, 0, 0, 0], 4, 2, 254),  // less specific: shadowed
            route([240, 1, 0, 0], 16, 7, 254), // ours
            route([240, 1, 2, 0], 24, 3, 254), // more specific, elsewhere
            route([240, 1, 0, 0], 16, 4, 100), // as specific, another table
            route([240, 1, 9, 9], 32, 5, 255), // a local address on another device
            route([10, 0, 0, 0], 8, 2, 254),   // unrelated
        ];
        let found: Vec<_> = conflicts(&routes, ours, Some(server_if))
            .into_iter()
            .map(|r| (r.dst, r.prefix_len, r.table))
            .collect();
        assert_eq!(
            found,
            vec![
                (Ipv4Addr::new(240, 1, 2, 0), 24, 254),
                (Ipv4Addr::new(240, 1, 0, 0), 16, 100),
                (Ipv4Addr::new(240, 1, 9, 9), 32, 255),
            ]
        );
        // Before the server end exists, our own route is not there either.
        assert_eq!(conflicts(&routes, ours, None).len(), 4);
        let server = (Ipv4Addr::new(240, 0, 0, 1), 32);
        assert!(conflicts(&routes, server, Some(server_if)).is_empty());
    }
}
