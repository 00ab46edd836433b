//! `serve --discover libvirt`: every running libvirt domain's taps become
//! ports, with no command.
//!
//! One worker thread owns the connection (libvirt's client calls block) and
//! acts on messages: domain events (lifecycle, device added or removed,
//! metadata changed) look at that one domain again; a host interface that
//! appears makes it look for domains it does not know yet, so a starting
//! domain's tap is served as soon as it exists, usually before libvirt even
//! reports the start; a closed connection is reopened with backoff, and
//! every (re)connect reconciles all running domains with what discovery
//! owns. Nothing polls: between events the thread sleeps.
//!
//! What it reads is the domain's live XML ([`domain_xml`]), through
//! libvirt's own API, loaded at run time ([`ffi`]): only this command needs
//! libvirt installed.
pub mod domain_xml;
pub mod events;
pub mod ffi;

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    time::Duration,
};

use anyhow::Context as _;
use tracing::{debug, info, warn};
use uuid::Uuid;

use self::{
    domain_xml::DomainDesc,
    events::{Msg, Subscription},
    ffi::{Connect, Domain},
};
use super::{Book, ConnectionState, Observation, PortSink, Status};

/// What `--libvirt-uri` defaults to: the system instance, as nova uses it.
pub const DEFAULT_URI: &str = "qemu:///system";

/// libvirt's keepalive: a libvirtd that stops answering for
/// `KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1)` seconds counts as gone.
const KEEPALIVE_INTERVAL: i32 = 5;
const KEEPALIVE_COUNT: u32 = 3;

/// The daemon's handle on the discovery thread.
pub struct Handle {
    tx: Sender<Msg>,
    status: Arc<Mutex<Status>>,
    sink: Arc<dyn PortSink>,
}

impl Handle {
    /// An interface appeared on the host (from the daemon's link events).
    pub fn link_appeared(&self, ifname: &str) {
        let _ = self.tx.send(Msg::LinkAppeared(ifname.to_owned()));
    }

    /// The sink changed behind discovery's back (the operator removed a
    /// manual port, put or deleted a document): apply every domain again.
    pub fn reapply(&self) {
        let _ = self.tx.send(Msg::Reapply);
    }

    /// `status`'s `discovery` object.
    pub fn status(&self) -> Status {
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let owned = self.sink.owned();
        status.ports_owned = owned.values().map(Vec::len).sum();
        for domain in &mut status.domains {
            domain.ports = owned.get(&domain.uuid).cloned().unwrap_or_default();
        }
        status
    }

    /// Asks the thread to close the connection and end. It does not wait:
    /// a call to a hung libvirtd must not hold up the daemon's exit.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Starts discovery from the libvirt at `uri`. Returns at once: the first
/// connection is made (and retried) on the thread, so the daemon serves
/// what its store holds even while libvirtd is down.
pub fn start(uri: &str, sink: Arc<dyn PortSink>) -> anyhow::Result<Handle> {
    events::start_event_loop().map_err(anyhow::Error::msg)?;
    let (tx, rx) = mpsc::channel();
    let status = Arc::new(Mutex::new(Status::new("libvirt", uri)));
    let worker = Worker {
        uri: uri.to_owned(),
        sink: Arc::clone(&sink),
        status: Arc::clone(&status),
        tx: tx.clone(),
        rx,
        book: Book::new(),
        live: None,
        generation: 0,
        backoff: Backoff::default(),
        reconcile_due: false,
    };
    std::thread::Builder::new()
        .name("libvirt-discovery".into())
        .spawn(move || worker.run())
        .context("starting the libvirt discovery thread")?;
    Ok(Handle { tx, status, sink })
}

struct Live {
    conn: Connect,
    subscription: Subscription,
}

struct Worker {
    uri: String,
    sink: Arc<dyn PortSink>,
    status: Arc<Mutex<Status>>,
    /// Cloned into each callback registration.
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    book: Book,
    live: Option<Live>,
    /// Counts connections, so that a close reported late for an old one is
    /// not taken for the current one's.
    generation: u64,
    backoff: Backoff,
    /// The last full pass failed half way: do it again.
    reconcile_due: bool,
}

/// How long the thread waits before trying again what failed.
const RETRY_DELAY: Duration = Duration::from_secs(1);

impl Worker {
    fn run(mut self) {
        loop {
            if self.live.is_none() {
                match self.connect() {
                    Ok(()) => self.reconcile_all(),
                    Err(err) => {
                        self.set_connection(
                            ConnectionState::Disconnected,
                            Some(format!("{err:#}")),
                        );
                        let delay = self.backoff.next();
                        if !self.sleep_disconnected(delay) {
                            return;
                        }
                        continue;
                    }
                }
            }
            let due = self.reconcile_due || self.book.has_retries();
            let wait = if due {
                RETRY_DELAY
            } else {
                Duration::from_secs(3600)
            };
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Domain { uuid, why, at }) => {
                    self.refresh(uuid);
                    debug!(%uuid, ?why, elapsed = ?at.elapsed(), "libvirt domain event handled");
                }
                Ok(Msg::LinkAppeared(ifname)) => self.link_appeared(&ifname),
                Ok(Msg::Closed { generation, reason }) => {
                    if generation == self.generation {
                        self.lost(format!(
                            "the connection closed ({})",
                            events::close_reason(reason)
                        ));
                    }
                }
                Ok(Msg::Reapply) => self.book.reapply(&*self.sink),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    self.close();
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.reconcile_due {
                        self.reconcile_all();
                    }
                    for uuid in self.book.take_retries() {
                        self.refresh(uuid);
                    }
                }
            }
            self.publish();
        }
    }

    /// Sleeps `delay` while disconnected; false if told to stop.
    fn sleep_disconnected(&mut self, delay: Duration) -> bool {
        let deadline = std::time::Instant::now() + delay;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                Err(RecvTimeoutError::Timeout) => return true,
                // Events of a connection that is gone, links: the reconcile
                // after reconnecting covers them.
                Ok(_) => {}
            }
        }
    }

    fn connect(&mut self) -> anyhow::Result<()> {
        let conn = Connect::open(&self.uri)
            .map_err(|err| anyhow::anyhow!("connecting to {}: {}", self.uri, err.message()))?;
        if let Err(err) = conn.set_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT) {
            debug!("libvirt keepalive not set: {}", err.message());
        }
        self.generation += 1;
        let subscription = match events::subscribe(&conn, &self.tx, self.generation) {
            Ok(subscription) => subscription,
            Err(err) => {
                conn.close();
                anyhow::bail!(
                    "subscribing to {}'s domain events: {}",
                    self.uri,
                    err.message()
                );
            }
        };
        self.live = Some(Live { conn, subscription });
        self.backoff.reset();
        self.set_connection(ConnectionState::Connected, None);
        Ok(())
    }

    /// The connection is lost: drop it; the loop reconnects.
    fn lost(&mut self, why: String) {
        self.close();
        self.set_connection(ConnectionState::Disconnected, Some(why));
    }

    fn close(&mut self) {
        if let Some(Live { conn, subscription }) = self.live.take() {
            events::unsubscribe(&conn, subscription);
            conn.close();
        }
    }

    /// Logs only when the state changes (not on every failed retry).
    fn set_connection(&mut self, state: ConnectionState, error: Option<String>) {
        let changed = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .set_connection(state, error.clone());
        match (state, changed) {
            (ConnectionState::Connected, true) => info!(uri = %self.uri, "connected to libvirt"),
            (ConnectionState::Disconnected, true) => warn!(
                uri = %self.uri,
                "libvirt unavailable: {}; serving what the store holds and retrying with backoff",
                error.as_deref().unwrap_or("?")
            ),
            (_, false) => {
                if let Some(error) = error {
                    debug!(uri = %self.uri, "still unavailable: {error}");
                }
            }
            _ => {}
        }
        self.publish();
    }

    fn publish(&self) {
        let owned = self.sink.owned();
        let mut status = self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.book.fill_status(&mut status, &owned);
    }

    /// Every running domain against what discovery owns.
    fn reconcile_all(&mut self) {
        self.reconcile_due = false;
        let Some(live) = &self.live else {
            return;
        };
        let result = live
            .conn
            .list_active_domains()
            .map_err(|err| err.message().to_owned())
            .and_then(|domains| {
                domains
                    .iter()
                    .map(|dom| describe(dom).map_err(|err| err.message().to_owned()))
                    .collect::<Result<Vec<_>, _>>()
            });
        match result {
            Ok(observations) => {
                let running = observations
                    .iter()
                    .filter(|o| !matches!(o, Observation::Gone(_)))
                    .count();
                self.book.reconcile(&*self.sink, observations);
                info!(
                    domains = running,
                    "reconciled with libvirt's running domains"
                );
            }
            Err(err) => self.call_failed(format!("listing the running domains: {err}")),
        }
    }

    /// After a failed call: a dead connection is dropped (and reconciled
    /// after reconnecting); otherwise the full pass is retried.
    fn call_failed(&mut self, what: String) {
        let alive = self
            .live
            .as_ref()
            .is_some_and(|live| live.conn.is_alive().unwrap_or(false));
        if alive {
            warn!("libvirt: {what}; retrying");
            self.reconcile_due = true;
        } else {
            self.lost(what);
        }
    }

    /// Looks at one domain again.
    fn refresh(&mut self, uuid: Uuid) {
        let Some(live) = &self.live else {
            return;
        };
        let observation = match live.conn.lookup_by_uuid(&uuid) {
            Ok(dom) => describe(&dom),
            Err(err) => Err(err),
        };
        match observation {
            Ok(observation) => self.book.observe(&*self.sink, observation),
            Err(err) if err.is_no_domain() => {
                self.book.observe(&*self.sink, Observation::Gone(uuid));
            }
            Err(err) => self.call_failed(format!("reading domain {uuid}: {}", err.message())),
        }
    }

    /// A host interface appeared that no port of ours has: if a domain
    /// that is starting owns it, serve that domain now.
    fn link_appeared(&mut self, ifname: &str) {
        if self.book.owns_tap(ifname) {
            return;
        }
        let Some(live) = &self.live else {
            return;
        };
        let domains = match live.conn.list_active_domains() {
            Ok(domains) => domains,
            Err(err) => {
                self.call_failed(format!("listing the running domains: {}", err.message()));
                return;
            }
        };
        // Domains seen earlier in their start, before their taps existed,
        // are looked at again too.
        let again: BTreeSet<Uuid> = self.book.without_ports().into_iter().collect();
        for dom in domains {
            let Ok(uuid) = dom.uuid() else {
                continue;
            };
            if self.book.knows(&uuid) && !again.contains(&uuid) {
                continue;
            }
            match describe(&dom) {
                Ok(observation) => self.book.observe(&*self.sink, observation),
                Err(err) if err.is_no_domain() => {}
                Err(err) => debug!(%uuid, "reading a starting domain: {}", err.message()),
            }
        }
    }
}

/// One domain as discovery sees it now.
fn describe(dom: &Domain) -> Result<Observation, ffi::Error> {
    let uuid = dom.uuid()?;
    let xml = match dom.xml_desc(0) {
        Ok(xml) => xml,
        Err(err) if err.is_no_domain() => return Ok(Observation::Gone(uuid)),
        Err(err) => return Err(err),
    };
    Ok(match DomainDesc::parse(&xml) {
        Ok(desc) if desc.active => Observation::Running(desc.ports()),
        Ok(_) => Observation::Gone(uuid),
        Err(error) => {
            if !dom.is_active()? {
                return Ok(Observation::Gone(uuid));
            }
            Observation::Unparsable {
                uuid,
                name: dom.name().unwrap_or_else(|_| uuid.to_string()),
                error,
            }
        }
    })
}

/// Reconnect delays: 1 s, doubling up to 15 s.
#[derive(Default)]
struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(15);

    fn next(&mut self) -> Duration {
        let next = self
            .last
            .map_or(Self::FIRST, |last| (last * 2).min(Self::MAX));
        self.last = Some(next);
        next
    }

    fn reset(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::discovery::testing::FakeSink;

    /// Waits until `check` holds for what the sink was told.
    #[track_caller]
    fn wait_for(sink: &FakeSink, what: &str, check: impl Fn(&FakeSink) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check(sink) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; sink has {:?}",
                sink.applied.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// libvirt's in-process test driver (`test:///default`, no libvirtd,
    /// no root): its events come through the same event loop and
    /// callbacks as qemu's. Its state is shared by the connections of one
    /// process, so this test and the discovery thread see the same domains.
    #[test]
    fn follows_domains_of_libvirts_test_driver() {
        let sink = Arc::new(FakeSink::default());
        let handle = start("test:///default", sink.clone()).unwrap();
        let conn = Connect::open("test:///default").unwrap();
        // The driver's own running domain, found by the first full pass.
        wait_for(&sink, "the test driver's domain", |sink| {
            sink.owned().values().any(|taps| taps == &["testnet0"])
        });
        assert_eq!(handle.status().connection, ConnectionState::Connected);

        let uuid: Uuid = "4b0e54a2-8c7f-4e0a-9a55-0d2f3c1b6e7d".parse().unwrap();
        let port = "3d6f8a1e-2c4b-4e9a-8f7d-1a2b3c4d5e6f";
        let xml = format!(
            r#"<domain type='test'>
                 <name>mdr-unit</name>
                 <uuid>{uuid}</uuid>
                 <metadata>
                   <nova:instance xmlns:nova="{nova}">
                     <nova:name>unit-vm</nova:name>
                     <nova:owner><nova:project uuid="proj-1">p</nova:project></nova:owner>
                     <nova:ports><nova:port uuid="{port}"><nova:ip type="fixed" address="10.9.8.7" ipVersion="4"/></nova:port></nova:ports>
                   </nova:instance>
                 </metadata>
                 <memory>65536</memory>
                 <os><type>hvm</type></os>
                 <devices>
                   <interface type='bridge'><mac address='fa:16:3e:01:02:03'/><source bridge='br0'/><target dev='tap3d6f8a1e-2c'/></interface>
                 </devices>
               </domain>"#,
            nova = domain_xml::NOVA_NS_1_1,
        );
        let dom = conn.create_xml(&xml).unwrap();
        wait_for(&sink, "the started domain", |sink| {
            sink.applied.lock().unwrap().contains_key(&uuid)
        });
        let applied = sink.applied.lock().unwrap()[&uuid].clone();
        assert_eq!(applied.name, "mdr-unit");
        assert_eq!(applied.instance_name.as_deref(), Some("unit-vm"));
        assert_eq!(applied.project_id.as_deref(), Some("proj-1"));
        assert_eq!(applied.ports.len(), 1);
        assert_eq!(applied.ports[0].ifname, "tap3d6f8a1e-2c");
        assert_eq!(applied.ports[0].mac.as_deref(), Some("fa:16:3e:01:02:03"));
        assert_eq!(applied.ports[0].port_id.unwrap().to_string(), port);
        assert_eq!(
            applied.ports[0].ips,
            ["10.9.8.7".parse::<std::net::Ipv4Addr>().unwrap()]
        );

        // A document set live arrives with the metadata-change event.
        dom.set_metadata_element(
            r#"<instance>{"hostname": "unit"}</instance>"#,
            domain_xml::DOCUMENT_KEY,
            domain_xml::DOCUMENT_NS,
        )
        .unwrap();
        wait_for(&sink, "the document", |sink| {
            sink.applied.lock().unwrap()[&uuid].document.as_deref()
                == Some(r#"{"hostname": "unit"}"#)
        });
        let status = handle.status();
        assert_eq!(status.domains_seen, 2, "{status:?}");
        assert_eq!(status.ports_owned, 2, "{status:?}");

        // Destroyed (a transient domain: gone altogether).
        dom.destroy().unwrap();
        wait_for(&sink, "the domain's ports removed", |sink| {
            !sink.owned().contains_key(&uuid)
        });
        assert!(sink.take_calls().contains(&format!("remove {uuid}")));
        handle.stop();
        drop(dom);
        conn.close();
    }

    #[test]
    fn reconnect_backoff_doubles_to_a_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 15, 15, 15]);
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_secs(1));
    }
}
