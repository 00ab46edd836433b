//! Watches on the local backend (`LocalWatch`): what wakes a held request,
//! what does not, and what it answers.
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode, header};
use tokio::sync::watch;

use super::*;
use crate::{
    backend::{local::watch::LocalWatch, watch::WatchQuery},
    state::Snapshot,
};

fn snapshot_with(docs: &[InstanceDoc]) -> Arc<Snapshot> {
    let mut snapshot = Snapshot::default();
    for doc in docs {
        snapshot.instances.insert(doc.uuid, Arc::new(doc.clone()));
    }
    Arc::new(snapshot)
}

fn other_instance() -> InstanceDoc {
    let mut doc = bare_instance();
    doc.name = "elsewhere".into();
    doc
}

/// Holds `path` with `last_etag` in a task; the answer and how long it took.
fn hold(
    h: &Arc<Harness>,
    snapshots: &watch::Sender<Arc<Snapshot>>,
    shutdown: &watch::Sender<bool>,
    path: &str,
    etag: &str,
    timeout_secs: u64,
) -> tokio::task::JoinHandle<(Answer, Duration)> {
    let h = h.clone();
    let snapshots = snapshots.subscribe();
    let shutdown = shutdown.subscribe();
    // Quotes are not URI characters: guests send the ETag without them
    // (or percent-encoded).
    let etag = etag.trim_matches('"');
    let query = format!("wait_for_change=true&last_etag={etag}&timeout_sec={timeout_secs}");
    let watch = WatchQuery::parse(Some(&query)).unwrap().unwrap();
    let uri = format!("{path}?{query}");
    tokio::spawn(async move {
        let guest = default_guest();
        let (parts, _) = request(Method::GET, &uri, &[], "").into_parts();
        let started = Instant::now();
        let reply = LocalWatch {
            ctx: &h.ctx,
            guest: &guest,
            snapshots,
            shutdown,
        }
        .run(&parts, &watch)
        .await;
        let status = reply.response.status();
        let headers = reply.response.headers().clone();
        let body = http_body_util::BodyExt::collect(reply.response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (
            Answer {
                status,
                headers,
                body,
                ip_ttl: reply.ip_ttl,
            },
            started.elapsed(),
        )
    })
}

fn etag(answer: &Answer) -> String {
    answer.headers[header::ETAG].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_put_that_changes_the_path_wakes_within_100_ms_and_one_elsewhere_does_not() {
    let h = Arc::new(Harness::new());
    let rich = rich_instance();
    let path = "/openstack/latest/meta_data.json";
    let before = h.get(&rich, path).await;
    // random_seed is new in every answer; the ETag leaves it out.
    assert_eq!(etag(&before), etag(&h.get(&rich, path).await));
    let (snapshots, _) = watch::channel(snapshot_with(&[rich.clone(), other_instance()]));
    let (shutdown, _) = watch::channel(false);
    let held = hold(&h, &snapshots, &shutdown, path, &etag(&before), 30);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut changed_elsewhere = other_instance();
    changed_elsewhere.name = "still elsewhere".into();
    snapshots.send_replace(snapshot_with(&[rich.clone(), changed_elsewhere]));
    // A change to this instance that meta_data.json does not show.
    let mut unseen = rich.clone();
    unseen.vendor_data = None;
    snapshots.send_replace(snapshot_with(&[unseen.clone()]));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "woken by a change it does not show");

    let mut changed = unseen;
    changed.meta.insert("role".into(), "db".into());
    let put_at = Instant::now();
    snapshots.send_replace(snapshot_with(&[changed]));
    let (answer, _) = held.await.unwrap();
    assert!(
        put_at.elapsed() < Duration::from_millis(100),
        "{:?}",
        put_at.elapsed()
    );
    assert_eq!(answer.status, StatusCode::OK);
    assert_ne!(etag(&answer), etag(&before));
    assert!(
        answer.text().contains(r#""role": "db""#),
        "{}",
        answer.text()
    );
}

#[tokio::test]
async fn a_timeout_answers_the_same_content_and_etag() {
    let h = Arc::new(Harness::new());
    let rich = rich_instance();
    let path = "/latest/meta-data/hostname";
    let before = h.get(&rich, path).await;
    let (snapshots, _) = watch::channel(snapshot_with(&[rich]));
    let (shutdown, _) = watch::channel(false);
    let (answer, waited) = hold(&h, &snapshots, &shutdown, path, &etag(&before), 1)
        .await
        .unwrap();
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(etag(&answer), etag(&before));
    assert_eq!(answer.body, before.body);
}

#[tokio::test]
async fn another_etag_answers_at_once_delete_ends_with_404_and_shutdown_answers() {
    let h = Arc::new(Harness::new());
    let rich = rich_instance();
    let path = "/openstack/latest/user_data";
    let (snapshots, _) = watch::channel(snapshot_with(std::slice::from_ref(&rich)));
    let (shutdown, _) = watch::channel(false);
    let (answer, waited) = hold(&h, &snapshots, &shutdown, path, "old", 30)
        .await
        .unwrap();
    assert!(waited < Duration::from_millis(100));
    assert_eq!(answer.body, USER_DATA);

    let current = etag(&answer);
    let held = hold(&h, &snapshots, &shutdown, path, &current, 30);
    tokio::time::sleep(Duration::from_millis(100)).await;
    snapshots.send_replace(snapshot_with(&[]));
    let (answer, _) = held.await.unwrap();
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "instance del ends it");

    snapshots.send_replace(snapshot_with(&[rich]));
    let held = hold(&h, &snapshots, &shutdown, path, &current, 3600);
    tokio::time::sleep(Duration::from_millis(100)).await;
    shutdown.send_replace(true);
    let (answer, _) = tokio::time::timeout(Duration::from_secs(1), held)
        .await
        .expect("shutdown ends held watches")
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(etag(&answer), current);
}

#[tokio::test]
async fn every_read_carries_an_etag_and_errors_do_not() {
    let h = Harness::new();
    let rich = rich_instance();
    for path in [
        "/",
        "/latest/meta-data/",
        "/openstack/latest/network_data.json",
        "/openstack/latest/vendor_data2.json",
    ] {
        let answer = h.get(&rich, path).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert!(answer.headers.contains_key(header::ETAG), "{path}");
    }
    let missing = h.get(&rich, "/latest/meta-data/nothing").await;
    assert!(!missing.headers.contains_key(header::ETAG));
}
