//! The instance document parser, and everything an accepted document is
//! rendered into: a document that `instance put` accepts must reload from
//! the store unchanged and be servable on every path of both trees.
use std::{collections::BTreeSet, net::Ipv4Addr, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use proptest::{collection, option, prelude::*, prop_assert, prop_assert_eq};
use serde_json::{Map, Value, json};

use super::check;
use crate::{
    backend::{
        Guest,
        local::{ApiConfig, ApiContext, PasswordError, PasswordStore, handle},
    },
    state::{
        Port,
        instance::{InstanceDoc, TokenMode},
        port::PortSpec,
    },
};

/// Any JSON value, a few levels deep, with the strings that stress text
/// handling: unicode, control characters, quotes, HTML.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            collection::btree_map(text(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Short strings from every corner: printable ASCII, anything Unicode,
/// and the characters a renderer must escape or refuse.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ._-]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
        collection::vec(
            prop_oneof![
                Just('\0'),
                Just('\n'),
                Just('\r'),
                Just('"'),
                Just('\\'),
                Just('<'),
                Just('&'),
                Just('='),
                Just('/'),
                Just('\u{2028}'),
                Just('\u{feff}'),
                Just('é'),
                Just('😀'),
                any::<char>(),
            ],
            0..12
        )
        .prop_map(|chars| chars.into_iter().collect()),
    ]
}

/// A value of roughly the right kind for `field`, or anything at all.
fn field_value(field: &'static str) -> BoxedStrategy<Value> {
    let typed: BoxedStrategy<Value> = match field {
        "uuid" => prop_oneof![
            Just(json!("7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e")),
            Just(json!("7C1B6E0E3E4F4E599D5E0A5A8B0C1D2E")),
            Just(json!("{7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e}")),
        ]
        .boxed(),
        "launch_index" => any::<u32>().prop_map(Value::from).boxed(),
        "public_keys" | "meta" => collection::btree_map(text(), text(), 0..4)
            .prop_map(|m| json!(m))
            .boxed(),
        "user_data" => prop_oneof![
            collection::vec(any::<u8>(), 0..64).prop_map(|bytes| {
                use base64::Engine as _;
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            }),
            "[A-Za-z0-9+/= \n]{0,40}".prop_map(Value::from),
        ]
        .boxed(),
        "vendor_data" | "network_data" => collection::btree_map(text(), json_value(), 0..4)
            .prop_map(|m| json!(m))
            .boxed(),
        "devices" => collection::vec(
            collection::btree_map(
                prop_oneof![
                    Just("type".to_owned()),
                    Just("bus".to_owned()),
                    Just("address".to_owned()),
                    Just("mac".to_owned()),
                    Just("tags".to_owned()),
                    Just("vlan".to_owned()),
                    Just("vf_trusted".to_owned()),
                    Just("serial".to_owned()),
                    Just("path".to_owned()),
                    text()
                ],
                prop_oneof![
                    Just(json!("nic")),
                    Just(json!("disk")),
                    Just(json!("share")),
                    json_value()
                ],
                0..6,
            )
            .prop_map(|m| json!(m)),
            0..4,
        )
        .prop_map(Value::Array)
        .boxed(),
        "dedicated_cpus" => collection::vec(any::<u32>(), 0..6)
            .prop_map(|v| json!(v))
            .boxed(),
        "ec2" => ec2().boxed(),
        "imds" => (
            prop_oneof![Just("optional"), Just("required"), Just("sometimes")],
            any::<u8>(),
        )
            .prop_map(|(tokens, hop_limit)| json!({"tokens": tokens, "hop_limit": hop_limit}))
            .boxed(),
        _ => text().prop_map(Value::String).boxed(),
    };
    prop_oneof![9 => typed, 1 => json_value()].boxed()
}

fn ec2() -> impl Strategy<Value = Value> {
    (
        option::of(text()),
        option::of(text()),
        option::of(any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_string())),
        collection::vec(text(), 0..4),
        collection::btree_map(text(), text(), 0..4),
    )
        .prop_map(|(id, kind, ip, groups, devices)| {
            let mut ec2 = Map::new();
            if let Some(id) = id {
                ec2.insert("instance_id".into(), json!(id));
            }
            if let Some(kind) = kind {
                ec2.insert("instance_type".into(), json!(kind));
            }
            if let Some(ip) = ip {
                ec2.insert("local_ipv4".into(), json!(ip));
            }
            ec2.insert("security_groups".into(), json!(groups));
            ec2.insert("block_device_mapping".into(), json!(devices));
            Value::Object(ec2)
        })
}

const FIELDS: [&str; 15] = [
    "uuid",
    "name",
    "hostname",
    "project_id",
    "availability_zone",
    "launch_index",
    "public_keys",
    "meta",
    "user_data",
    "vendor_data",
    "network_data",
    "devices",
    "dedicated_cpus",
    "ec2",
    "imds",
];

/// A document: uuid and name most of the time, any subset of the other
/// fields, now and then a field that does not exist.
fn document() -> impl Strategy<Value = Value> {
    let fields: Vec<BoxedStrategy<Option<(&'static str, Value)>>> = FIELDS
        .iter()
        .map(|&field| {
            let weight = if field == "uuid" || field == "name" {
                19
            } else {
                1
            };
            prop_oneof![
                1 => Just(None),
                weight => field_value(field).prop_map(move |v| Some((field, v))),
            ]
            .boxed()
        })
        .collect();
    (fields, option::weighted(0.05, (text(), json_value()))).prop_map(|(fields, extra)| {
        let mut doc = Map::new();
        for (field, value) in fields.into_iter().flatten() {
            doc.insert(field.to_owned(), value);
        }
        if let Some((key, value)) = extra {
            doc.insert(key, value);
        }
        Value::Object(doc)
    })
}

/// What the parser is fed: a document as JSON, or bytes that may not even
/// be JSON.
#[derive(Debug, Clone)]
enum Input {
    Document(Value),
    Bytes(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        8 => document().prop_map(Input::Document),
        1 => collection::vec(any::<u8>(), 0..256).prop_map(Input::Bytes),
        1 => document().prop_flat_map(|doc| {
            // A document cut or corrupted somewhere.
            let bytes = serde_json::to_vec(&doc).unwrap();
            let len = bytes.len();
            (Just(bytes), 0..=len, any::<u8>()).prop_map(|(mut bytes, at, byte)| {
                if at < bytes.len() && byte % 2 == 0 {
                    bytes[at] = byte;
                } else {
                    bytes.truncate(at);
                }
                Input::Bytes(bytes)
            })
        }),
    ]
}

struct NoPasswords;

impl PasswordStore for NoPasswords {
    fn password(&self, _: &uuid::Uuid) -> Result<Option<String>, PasswordError> {
        Ok(Some("posted".into()))
    }
    fn set_password(&self, _: &uuid::Uuid, _: &str) -> Result<(), PasswordError> {
        Err(PasswordError::AlreadySet)
    }
}

fn guest(doc: &InstanceDoc) -> Guest {
    Guest {
        port: Arc::new(Port {
            spec: PortSpec {
                ifname: "tap-fuzz".into(),
                instance: doc.uuid,
                port_id: None,
                mac: Some("fa:16:3e:00:00:01".into()),
                ips: vec![Ipv4Addr::new(10, 0, 0, 5).into()],
                network_id: None,
                project_id: None,
            },
            slot: 1,
            source: crate::state::Source::Manual,
        }),
        guest_addr: Some(Ipv4Addr::new(10, 0, 0, 5).into()),
    }
}

/// GETs every path both trees list, starting from their roots, and
/// checks each answer is a 200 or a 404. Returns how many were asked.
async fn crawl(ctx: &ApiContext, doc: &InstanceDoc) -> Result<usize, TestCaseError> {
    let guest = guest(doc);
    let doc = Arc::new(doc.clone());
    let mut queue: Vec<String> = ["/", "/openstack/", "/latest/", "/2009-04-04/meta-data/"]
        .map(String::from)
        .to_vec();
    for version in [
        "2012-08-10",
        "2013-04-04",
        "2016-06-30",
        "2020-10-14",
        "latest",
    ] {
        queue.push(format!("/openstack/{version}/"));
    }
    let mut seen = BTreeSet::new();
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) || seen.len() > 400 {
            continue;
        }
        // A listed name no URI can carry (a meta key with a space, ...):
        // a guest cannot ask for it either.
        let Ok(request) = Request::builder()
            .method(Method::GET)
            .uri(&path)
            .body(Full::new(Bytes::new()))
        else {
            continue;
        };
        let reply = handle(ctx, &guest, Some(doc.clone()), request).await;
        let status = reply.response.status();
        let body = reply
            .response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        // Without a token, `imds.tokens: required` refuses EC2 paths.
        let needs_token = doc
            .imds
            .as_ref()
            .is_some_and(|imds| imds.tokens == TokenMode::Required);
        prop_assert!(
            status == StatusCode::OK
                || status == StatusCode::NOT_FOUND
                || (needs_token && status == StatusCode::UNAUTHORIZED),
            "GET {path}: {status}"
        );
        if status == StatusCode::OK && path.ends_with('/') {
            // A listing: one entry per line ("0=name" for public keys).
            for line in String::from_utf8_lossy(&body).lines() {
                let entry = line.split('=').next().unwrap_or(line);
                if !entry.is_empty() && !entry.contains(['?', '#', '%', ' ']) {
                    queue.push(format!("{path}{entry}"));
                    // Versions are listed without a slash; their trees
                    // are below them.
                    if !entry.ends_with('/') && (path == "/" || path == "/openstack/") {
                        queue.push(format!("{path}{entry}/"));
                    }
                }
            }
        }
    }
    Ok(seen.len())
}

#[test]
fn fuzz_instance_documents() {
    let ctx = ApiContext::new(ApiConfig::default(), [7; 32], Arc::new(NoPasswords));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    check("instance_doc", input(), |input| {
        let bytes = match input {
            Input::Document(doc) => serde_json::to_vec(&doc).unwrap(),
            Input::Bytes(bytes) => bytes,
        };
        let Ok(doc) = InstanceDoc::from_json(&bytes) else {
            return Ok(());
        };
        // What the registry stores, and reads back after a restart.
        let stored = serde_json::to_string(&doc).unwrap();
        let reloaded: InstanceDoc = serde_json::from_str(&stored)
            .map_err(|err| TestCaseError::fail(format!("stored form does not reload: {err}")))?;
        prop_assert_eq!(&reloaded, &doc);
        prop_assert_eq!(&InstanceDoc::from_json(stored.as_bytes()).unwrap(), &doc);
        runtime.block_on(crawl(&ctx, &doc))?;
        Ok(())
    });
}
