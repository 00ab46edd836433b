//! Where the server's veth end lives, and the network items checked there.
//!
//! The server end lives in the daemon's server namespace (`--server-netns`,
//! `/run/netns/NAME`), so its routes, rp_filter and firewall are that
//! namespace's, not the host's: the items enter it (on a thread of their
//! own, as serve does) and look there. Before the first daemon made it there
//! is nothing to look at: serve creates it with its own routes only and no
//! firewall rules.
use std::path::Path;

use super::{Item, firewall, routes};
use crate::{
    cli::settings::Settings,
    datapath::server_netns::{NETNS_RUN_DIR, ServerNetns},
};

pub async fn network_items(settings: &Settings) -> Vec<Item> {
    let name = settings.server_netns.clone();
    if !Path::new(NETNS_RUN_DIR).join(&name).exists() {
        let what = format!(
            "the server's namespace {name} does not exist yet; serve creates it with its own \
             routes only"
        );
        return vec![
            Item::ok("routes", what.clone()),
            Item::ok("rp_filter", what.clone()),
            Item::ok("firewall", format!("{what} and no firewall rules")),
        ];
    }
    let settings = settings.clone();
    let inside = ServerNetns::ensure(&name).and_then(|netns| {
        netns.run(move || -> anyhow::Result<Vec<Item>> {
            // A runtime of this thread's own: the netlink socket it opens
            // must belong to the namespace this thread entered.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok(runtime.block_on(async {
                let mut items = routes::items(&settings).await;
                items.push(firewall::item(&settings));
                items
            }))
        })?
    });
    inside.unwrap_or_else(|err| {
        vec![Item::fail(
            "routes",
            format!("cannot enter the server's namespace {name}: {err:#}"),
            format!("run as root, or ip netns del {name} (serve makes it again)"),
        )]
    })
}
