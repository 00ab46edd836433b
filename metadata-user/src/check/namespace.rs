//! Where the server's veth end lives, and the network items checked there.
//!
//! Today the server end is in the daemon's own network namespace, the one
//! `check` runs in, so the items look here. If the server end moves into a
//! namespace of its own, this is the one place to change: enter it (setns
//! on a thread of its own) before these items run, and the firewall item
//! then reads that namespace's rules, which the host's do not reach.
use super::{Item, firewall, routes};
use crate::cli::settings::Settings;

pub async fn network_items(settings: &Settings) -> Vec<Item> {
    let mut items = routes::items(settings).await;
    items.push(firewall::item(settings));
    items
}
