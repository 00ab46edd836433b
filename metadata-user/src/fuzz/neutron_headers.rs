//! The neutron-agent socket's identification: whatever headers arrive
//! (several of a kind, comma lists, garbage), a port is picked only when
//! it has the address the proxy gave last and, for a network ID, is on
//! that network; otherwise the request is refused.
use std::{net::Ipv4Addr, sync::Arc};

use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
};
use proptest::{collection, prelude::*, prop_assert, prop_assert_eq};

use super::check;
use crate::{
    ingress::neutron_agent::{Refusal, identify},
    state::{Port, port::PortSpec},
};

const NETWORKS: [&str; 2] = [
    "aaaaaaaa-0000-4000-8000-000000000001",
    "bbbbbbbb-0000-4000-8000-000000000002",
];

fn ports() -> Vec<Arc<Port>> {
    // Overlapping addresses on two networks, and one port on no network.
    let port = |slot: u32, network: Option<&str>, last: u8| {
        Arc::new(Port {
            spec: PortSpec {
                ifname: format!("tap{slot}"),
                instance: uuid::Uuid::from_u128(slot.into()),
                port_id: None,
                mac: None,
                ips: vec![Ipv4Addr::new(10, 0, 0, last).into()],
                network_id: network.map(|n| n.parse().unwrap()),
                project_id: None,
            },
            slot,
            source: crate::state::Source::Manual,
        })
    };
    vec![
        port(1, Some(NETWORKS[0]), 5),
        port(2, Some(NETWORKS[1]), 5),
        port(3, Some(NETWORKS[1]), 6),
        port(4, None, 7),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        (4u8..9).prop_map(|last| format!("10.0.0.{last}")),
        Just(NETWORKS[0].to_owned()),
        Just(NETWORKS[1].to_owned()),
        Just("10.0.0.5, 10.0.0.6".to_owned()),
        Just(" , ".to_owned()),
        "[ -~]{0,40}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let name = prop_oneof![
        Just("x-forwarded-for"),
        Just("x-neutron-network-id"),
        Just("x-neutron-router-id"),
        Just("x-other"),
    ];
    collection::vec((name, value()), 0..6)
}

/// The last comma-separated element of the last line of `name`.
fn last(pairs: &[(&str, String)], name: &str) -> Option<String> {
    let line = pairs.iter().rev().find(|(n, _)| *n == name)?;
    let value = line.1.rsplit(',').next()?.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

#[test]
fn fuzz_neutron_proxy_headers() {
    let ports = ports();
    check("neutron_headers", headers(), |pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in &pairs {
            let Ok(value) = HeaderValue::from_str(value) else {
                return Ok(());
            };
            map.append(HeaderName::from_static(name), value);
        }
        match identify(&map, &ports) {
            Ok((port, addr)) => {
                prop_assert_eq!(Some(addr.to_string()), last(&pairs, "x-forwarded-for"));
                prop_assert!(port.spec.ips.contains(&addr));
                let network = last(&pairs, "x-neutron-network-id");
                let router = last(&pairs, "x-neutron-router-id");
                prop_assert!(network.is_some() != router.is_some(), "{pairs:?}");
                if let Some(network) = network {
                    prop_assert_eq!(port.spec.network_id, network.parse().ok());
                }
                // The match was the only one.
                let others = ports
                    .iter()
                    .filter(|p| p.spec.ips.contains(&addr))
                    .filter(|p| match last(&pairs, "x-neutron-network-id") {
                        Some(n) => p.spec.network_id == n.parse().ok(),
                        None => true,
                    })
                    .count();
                prop_assert_eq!(others, 1);
            }
            Err(Refusal::BadRequest(_)) | Err(Refusal::NotFound) => {}
        }
        Ok(())
    });
}
