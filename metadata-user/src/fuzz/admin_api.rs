//! The admin API's requests: any method, path and body. Whatever arrives,
//! the answer is a deliberate one (never a 500, always a JSON body), and a
//! refused request leaves the store and the published snapshot as they were.
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request};
use proptest::{collection, prelude::*, prop_assert, prop_assert_eq};
use serde_json::json;

use super::{check, instance_doc};
use crate::{
    admin::{
        server::{Context, DatapathView},
        wire::TapState,
    },
    state::{Port, Registry},
};

const INSTANCE: &str = "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e";

#[derive(Debug, Clone)]
struct AdminRequest {
    method: Method,
    path: String,
    body: Vec<u8>,
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::PUT),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::PATCH),
        Just(Method::HEAD),
        "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("v1".to_owned()),
        Just("instances".to_owned()),
        Just("ports".to_owned()),
        Just("status".to_owned()),
        Just(INSTANCE.to_owned()),
        Just("tap0".to_owned()),
        Just("%zz".to_owned()),
        Just("%2F".to_owned()),
        Just("..".to_owned()),
        Just(String::new()),
        "[a-zA-Z0-9%._~-]{1,20}",
    ];
    collection::vec(segment, 0..5).prop_map(|segments| format!("/{}", segments.join("/")))
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let port_request = (
        prop_oneof![Just("tap0".to_owned()), "[ -~]{0,20}"],
        prop_oneof![Just(INSTANCE.to_owned()), "[ -~]{0,40}"],
        proptest::option::of("[ -~]{0,20}"),
        collection::vec("[0-9.]{0,16}", 0..3),
        proptest::option::of(instance_doc::json_value()),
    )
        .prop_map(|(ifname, instance, mac, ips, extra)| {
            let mut request = json!({"ifname": ifname, "instance": instance, "ips": ips});
            if let Some(mac) = mac {
                request["mac"] = json!(mac);
            }
            if let Some(extra) = extra {
                request["network_id"] = extra;
            }
            serde_json::to_vec(&request).unwrap()
        });
    let document = instance_doc::json_value().prop_map(|mut doc| {
        if let Some(object) = doc.as_object_mut() {
            object.insert("uuid".into(), json!(INSTANCE));
            object.entry("name").or_insert(json!("fuzzed"));
        }
        serde_json::to_vec(&doc).unwrap()
    });
    prop_oneof![
        Just(Vec::new()),
        port_request,
        document,
        collection::vec(any::<u8>(), 0..128),
    ]
}

fn admin_request() -> impl Strategy<Value = AdminRequest> {
    (method(), path(), body()).prop_map(|(method, path, body)| AdminRequest { method, path, body })
}

/// A datapath with every port's tap attached (a `?wait=` returns at once)
/// and nothing to report.
struct NoDatapath;

impl DatapathView for NoDatapath {
    fn status(&self, _taps: bool) -> serde_json::Value {
        json!({})
    }

    fn tap_state(&self, port: &Port) -> TapState {
        TapState::Attached {
            ifindex: 1,
            slot: port.slot,
        }
    }

    fn next_change(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::pending())
    }
}

#[test]
fn fuzz_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).unwrap();
    registry
        .put_instance(
            json!({"uuid": INSTANCE, "name": "kept"})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let context = Context::new(registry.clone(), Arc::new(NoDatapath), vec![]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    check("admin_api", admin_request(), |request| {
        let before = registry.snapshot();
        let mut builder = Request::builder().method(request.method.clone());
        builder = builder.uri(request.path.as_str());
        let Ok(http) = builder.body(Full::new(Bytes::from(request.body.clone()))) else {
            // Not a URI hyper would have parsed off the socket either.
            return Ok(());
        };
        let answer = runtime.block_on(context.handle(http));
        let status = answer.status();
        let body = runtime
            .block_on(answer.into_body().collect())
            .unwrap()
            .to_bytes();
        prop_assert!(
            !status.is_server_error(),
            "{} {}: {status} {body:?}",
            request.method,
            request.path
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|err| TestCaseError::fail(format!("answer is not JSON ({err}): {body:?}")))?;
        if !status.is_success() {
            let error = parsed["error"].as_str().unwrap_or_default();
            prop_assert!(!error.is_empty() && !error.contains('\n'), "{parsed}");
            prop_assert!(
                Arc::ptr_eq(&before, &registry.snapshot()),
                "a refused request ({status}) published a snapshot"
            );
        }
        // Whatever happened, the instance the test needs is back for the
        // next case (a DELETE may have removed it).
        if registry.snapshot().instances.is_empty() {
            registry
                .put_instance(
                    json!({"uuid": INSTANCE, "name": "kept"})
                        .to_string()
                        .as_bytes(),
                )
                .unwrap();
        }
        prop_assert_eq!(registry.snapshot().instances.len(), 1);
        Ok(())
    });
}
