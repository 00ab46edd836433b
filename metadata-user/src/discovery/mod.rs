//! Discovery: ports that come from what the host runs rather than from
//! `port add` (`serve --discover libvirt`).
//!
//! A source (today only [`libvirt`]) watches the hypervisor and describes
//! each running domain as a [`DomainPorts`]: the domain's UUID (the
//! instance id), its taps with their MACs, and what its metadata says
//! (nova's project, name, port ids and fixed IPs; or the instance document
//! a plain libvirt host keeps in the domain). It hands those to the rest of
//! the daemon through one small trait, [`PortSink`], and nothing else:
//! "make this domain's ports these", "remove this domain's ports", "which
//! domains do I own ports for". Whatever the sink refuses (a tap a manual
//! port holds, a domain with no document) comes back as problems, which
//! discovery logs once and shows in `status`.
//!
//! [`Book`] is the bookkeeping every source shares: what was applied last
//! for each domain (so an event that changes nothing writes nothing), what
//! to log when, what failed and must be tried again, and the full
//! reconciliation after a (re)connect or a daemon start.
pub mod libvirt;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::SystemTime,
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use uuid::Uuid;

/// `serve --discover SOURCE` (and the config file's `discover`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiscoverKind {
    /// Every running libvirt domain's taps (`--libvirt-uri`).
    Libvirt,
}

/// Where `serve` learns ports from besides `port add`, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoverConfig {
    Libvirt { uri: String },
}

/// One running domain as discovery wants it served.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainPorts {
    /// The domain's UUID: the instance id its ports are bound to.
    pub uuid: Uuid,
    /// libvirt's name for the domain (logs, status, messages).
    pub name: String,
    /// `<nova:name>`, the instance's display name, where nova wrote one.
    pub instance_name: Option<String>,
    /// `<nova:owner><nova:project uuid>`: what nova needs as X-Tenant-ID.
    pub project_id: Option<String>,
    /// The instance document in the domain's metadata (local backend), as
    /// written there; [`document_json`] turns it into `instance put`'s JSON.
    pub document: Option<String>,
    /// One per tap, in the domain's order.
    pub ports: Vec<DiscoveredPort>,
}

/// A tap of a domain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiscoveredPort {
    pub ifname: String,
    pub mac: Option<String>,
    /// nova's port id, where nova lists the port for this tap.
    pub port_id: Option<Uuid>,
    /// The port's fixed IPv4 addresses, from the same place.
    pub ips: Vec<Ipv4Addr>,
}

/// How discovery changes what the daemon serves. Implemented by the
/// daemon's state; every call is synchronous (the store commits before it
/// returns) and made from discovery's own thread.
pub trait PortSink: Send + Sync {
    /// Makes the ports discovery owns for `domain.uuid` exactly
    /// `domain.ports` (added, replaced in place, removed), and, for the
    /// local backend, the instance what the domain's document says.
    /// Applying the same description again changes nothing.
    ///
    /// `Ok` carries what is not served and why (a tap that a manual port
    /// holds, no document, no project in nova mode), one line each; `Err`
    /// means nothing could be done now (the store failed) and discovery
    /// tries again later.
    fn apply(&self, domain: &DomainPorts) -> anyhow::Result<Vec<String>>;

    /// Removes every port discovery owns for the domain, and what it
    /// brought with them (its document).
    fn remove(&self, uuid: &Uuid) -> anyhow::Result<()>;

    /// The domains discovery owns ports for now, with those ports' tap
    /// names: what the store kept across a daemon restart included.
    fn owned(&self) -> BTreeMap<Uuid, Vec<String>>;
}

/// What a source learnt about one domain.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// Running (or starting), described in full.
    Running(DomainPorts),
    /// Running, but its XML or metadata does not parse: not served.
    Unparsable {
        uuid: Uuid,
        name: String,
        error: String,
    },
    /// Stopped, destroyed, undefined or migrated away.
    Gone(Uuid),
}

impl Observation {
    pub fn uuid(&self) -> Uuid {
        match self {
            Observation::Running(domain) => domain.uuid,
            Observation::Unparsable { uuid, .. } | Observation::Gone(uuid) => *uuid,
        }
    }
}

/// The instance document a domain carries, as the JSON `instance put`
/// takes: `uuid` defaults to the domain's (and must be the domain's: a
/// domain cannot speak for another instance), `name` to `default_name`.
pub fn document_json(text: &str, uuid: &Uuid, default_name: &str) -> Result<Vec<u8>, String> {
    let mut value: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|err| format!("instance document: invalid JSON ({err})"))?;
    let object = value
        .as_object_mut()
        .ok_or("instance document: not a JSON object")?;
    match object.get("uuid") {
        None => {
            object.insert("uuid".into(), uuid.to_string().into());
        }
        Some(serde_json::Value::String(given))
            if Uuid::parse_str(given).is_ok_and(|given| given == *uuid) => {}
        Some(given) => {
            return Err(format!(
                "instance document: uuid {given} is not the domain's ({uuid})"
            ));
        }
    }
    object
        .entry("name")
        .or_insert_with(|| default_name.to_owned().into());
    serde_json::to_vec(&value).map_err(|err| format!("instance document: {err}"))
}

/// Where a source's connection to the hypervisor stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Not tried yet.
    Connecting,
    Connected,
    /// Lost or never made; retried with backoff.
    Disconnected,
}

/// A domain as `status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainStatus {
    pub uuid: Uuid,
    pub name: String,
    /// Taps discovery serves for it.
    pub ports: Vec<String>,
    /// What is not served and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// `status`'s `discovery` object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Status {
    /// `libvirt`.
    pub source: &'static str,
    pub uri: String,
    pub connection: ConnectionState,
    /// Seconds since the epoch of the last change of `connection`.
    pub connection_since: u64,
    /// Why the last connection attempt failed or the connection was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Running domains seen (served or not).
    pub domains_seen: usize,
    /// Ports discovery registered.
    pub ports_owned: usize,
    pub domains: Vec<DomainStatus>,
}

impl Status {
    pub fn new(source: &'static str, uri: &str) -> Self {
        Self {
            source,
            uri: uri.to_owned(),
            connection: ConnectionState::Connecting,
            connection_since: unix_now(),
            last_error: None,
            domains_seen: 0,
            ports_owned: 0,
            domains: Vec::new(),
        }
    }

    /// Records a change of connection state; true if it changed (the
    /// caller logs only then).
    pub fn set_connection(&mut self, state: ConnectionState, error: Option<String>) -> bool {
        let changed = self.connection != state;
        if changed {
            self.connection = state;
            self.connection_since = unix_now();
        }
        if error.is_some() || state == ConnectionState::Connected {
            self.last_error = error;
        }
        changed
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// What discovery last did with one domain.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    name: String,
    /// What was applied (None: unparsable, so nothing is served).
    applied: Option<DomainPorts>,
    problems: Vec<String>,
}

/// Discovery's memory of the domains it serves, shared by every source.
pub struct Book {
    seen: BTreeMap<Uuid, Seen>,
    /// Domains whose last sink call failed: observe them again later.
    retry: BTreeSet<Uuid>,
}

impl Default for Book {
    fn default() -> Self {
        Self::new()
    }
}

impl Book {
    pub fn new() -> Self {
        Self {
            seen: BTreeMap::new(),
            retry: BTreeSet::new(),
        }
    }

    /// Whether the domain has been observed running (served or not).
    pub fn knows(&self, uuid: &Uuid) -> bool {
        self.seen.contains_key(uuid)
    }

    /// Whether some known domain has a port on `ifname`.
    pub fn owns_tap(&self, ifname: &str) -> bool {
        self.seen.values().any(|seen| {
            seen.applied
                .as_ref()
                .is_some_and(|domain| domain.ports.iter().any(|port| port.ifname == ifname))
        })
    }

    /// Known domains with no port yet (seen while starting, before their
    /// taps existed).
    pub fn without_ports(&self) -> Vec<Uuid> {
        self.seen
            .iter()
            .filter(|(_, seen)| seen.applied.as_ref().is_some_and(|d| d.ports.is_empty()))
            .map(|(uuid, _)| *uuid)
            .collect()
    }

    /// Applies every served domain again as it was last seen, without
    /// asking the source: for when the sink changed behind discovery's
    /// back (the operator removed a manual port that held a domain's tap,
    /// or put or deleted a document), so that what was refused is served
    /// now and the problems shown are today's.
    pub fn reapply(&mut self, sink: &dyn PortSink) {
        let applied: Vec<DomainPorts> = self
            .seen
            .values()
            .filter_map(|seen| seen.applied.clone())
            .collect();
        for domain in applied {
            self.apply(sink, domain);
        }
    }

    /// Domains to observe again because applying them failed.
    pub fn take_retries(&mut self) -> BTreeSet<Uuid> {
        std::mem::take(&mut self.retry)
    }

    pub fn has_retries(&self) -> bool {
        !self.retry.is_empty()
    }

    /// Acts on one observation: applies a running domain (if it changed),
    /// removes a gone or unparsable one. Logs what changed.
    pub fn observe(&mut self, sink: &dyn PortSink, observation: Observation) {
        let uuid = observation.uuid();
        match observation {
            Observation::Running(domain) => {
                if let Some(seen) = self.seen.get(&uuid)
                    && seen.applied.as_ref() == Some(&domain)
                {
                    return;
                }
                self.apply(sink, domain);
            }
            Observation::Unparsable { name, error, .. } => {
                let problems = vec![error];
                if let Some(seen) = self.seen.get(&uuid)
                    && seen.applied.is_none()
                    && seen.problems == problems
                {
                    return;
                }
                warn!(domain = %name, %uuid, "skipped, not served: {}", problems[0]);
                // Whatever it had is not trustworthy any more.
                if let Err(err) = sink.remove(&uuid) {
                    warn!(domain = %name, %uuid, "removing the domain's ports: {err:#}; retrying");
                    self.retry.insert(uuid);
                }
                self.seen.insert(
                    uuid,
                    Seen {
                        name,
                        applied: None,
                        problems,
                    },
                );
            }
            Observation::Gone(_) => {
                let seen = self.seen.get(&uuid);
                let owned = sink.owned().contains_key(&uuid);
                if seen.is_none() && !owned {
                    return;
                }
                match sink.remove(&uuid) {
                    Ok(()) => {
                        if owned {
                            let name = seen.map_or("?", |seen| seen.name.as_str());
                            info!(domain = %name, %uuid, "the domain is gone; its ports are removed");
                        }
                        self.seen.remove(&uuid);
                    }
                    Err(err) => {
                        warn!(%uuid, "removing the ports of a domain that is gone: {err:#}; retrying");
                        self.retry.insert(uuid);
                    }
                }
            }
        }
    }

    /// Hands a running domain to the sink; logs what changed, and each
    /// problem the first time it is seen.
    fn apply(&mut self, sink: &dyn PortSink, domain: DomainPorts) {
        let uuid = domain.uuid;
        match sink.apply(&domain) {
            Ok(problems) => {
                let before = self.seen.get(&uuid);
                match before.and_then(|seen| seen.applied.as_ref()) {
                    None => info!(
                        domain = %domain.name, %uuid,
                        ports = %tap_list(&domain),
                        "serving the domain's ports"
                    ),
                    Some(old) if old.ports != domain.ports => info!(
                        domain = %domain.name, %uuid,
                        ports = %tap_list(&domain),
                        "the domain's interfaces changed; ports updated"
                    ),
                    Some(old) if *old != domain => info!(
                        domain = %domain.name, %uuid,
                        "the domain's metadata changed"
                    ),
                    Some(_) => {}
                }
                let old_problems = before.map(|seen| seen.problems.clone());
                for problem in &problems {
                    if !old_problems
                        .as_ref()
                        .is_some_and(|old| old.contains(problem))
                    {
                        warn!(domain = %domain.name, %uuid, "{problem}");
                    }
                }
                self.seen.insert(
                    uuid,
                    Seen {
                        name: domain.name.clone(),
                        applied: Some(domain),
                        problems,
                    },
                );
            }
            Err(err) => {
                warn!(domain = %domain.name, %uuid, "registering the domain's ports: {err:#}; retrying");
                self.retry.insert(uuid);
            }
        }
    }

    /// A full pass after (re)connecting or starting: `running` is every
    /// domain running now. Domains that discovery knew or owns ports for
    /// and that are not among them are gone (stopped while the daemon or
    /// the connection was down).
    pub fn reconcile(&mut self, sink: &dyn PortSink, running: Vec<Observation>) {
        let now: BTreeSet<Uuid> = running.iter().map(Observation::uuid).collect();
        let before: BTreeSet<Uuid> = self
            .seen
            .keys()
            .copied()
            .chain(sink.owned().into_keys())
            .collect();
        for uuid in before.difference(&now) {
            self.observe(sink, Observation::Gone(*uuid));
        }
        for observation in running {
            self.observe(sink, observation);
        }
    }

    /// The domains part of `status`.
    pub fn fill_status(&self, status: &mut Status, owned: &BTreeMap<Uuid, Vec<String>>) {
        status.domains = self
            .seen
            .iter()
            .map(|(uuid, seen)| DomainStatus {
                uuid: *uuid,
                name: seen.name.clone(),
                ports: owned.get(uuid).cloned().unwrap_or_default(),
                problems: seen.problems.clone(),
            })
            .collect();
        status.domains_seen = self.seen.len();
        status.ports_owned = owned.values().map(Vec::len).sum();
    }
}

fn tap_list(domain: &DomainPorts) -> String {
    if domain.ports.is_empty() {
        return "none".into();
    }
    domain
        .ports
        .iter()
        .map(|port| port.ifname.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A sink for tests: keeps what it was told, and can be made to fail.
#[cfg(test)]
pub mod testing {
    use std::{collections::BTreeMap, sync::Mutex};

    use uuid::Uuid;

    use super::{DomainPorts, PortSink};

    #[derive(Default)]
    pub struct FakeSink {
        pub owned: Mutex<BTreeMap<Uuid, Vec<String>>>,
        /// Every applied description, by domain, the last one only.
        pub applied: Mutex<BTreeMap<Uuid, DomainPorts>>,
        pub calls: Mutex<Vec<String>>,
        pub fail: Mutex<bool>,
        pub problems: Mutex<Vec<String>>,
    }

    impl PortSink for FakeSink {
        fn apply(&self, domain: &DomainPorts) -> anyhow::Result<Vec<String>> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("apply {}", domain.name));
            if *self.fail.lock().unwrap() {
                anyhow::bail!("store failed");
            }
            self.owned.lock().unwrap().insert(
                domain.uuid,
                domain.ports.iter().map(|p| p.ifname.clone()).collect(),
            );
            self.applied
                .lock()
                .unwrap()
                .insert(domain.uuid, domain.clone());
            Ok(self.problems.lock().unwrap().clone())
        }

        fn remove(&self, uuid: &Uuid) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(format!("remove {uuid}"));
            if *self.fail.lock().unwrap() {
                anyhow::bail!("store failed");
            }
            self.owned.lock().unwrap().remove(uuid);
            self.applied.lock().unwrap().remove(uuid);
            Ok(())
        }

        fn owned(&self) -> BTreeMap<Uuid, Vec<String>> {
            self.owned.lock().unwrap().clone()
        }
    }

    impl FakeSink {
        pub fn take_calls(&self) -> Vec<String> {
            std::mem::take(&mut self.calls.lock().unwrap())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::FakeSink;
    use super::*;

    const A: &str = "6f1c2b9e-54b4-4c0e-9d0b-2b3c1e0f7a10";
    const B: &str = "0b5c53a2-4a8e-4b1f-8a37-2f1e5b9c7d10";

    fn domain(uuid: &str, name: &str, taps: &[&str]) -> DomainPorts {
        DomainPorts {
            uuid: uuid.parse().unwrap(),
            name: name.into(),
            instance_name: None,
            project_id: Some("p".into()),
            document: None,
            ports: taps
                .iter()
                .map(|tap| DiscoveredPort {
                    ifname: (*tap).into(),
                    mac: None,
                    port_id: None,
                    ips: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn an_unchanged_domain_is_not_applied_again() {
        let sink = FakeSink::default();
        let mut book = Book::new();
        book.observe(&sink, Observation::Running(domain(A, "a", &["tap0"])));
        book.observe(&sink, Observation::Running(domain(A, "a", &["tap0"])));
        assert_eq!(sink.take_calls(), ["apply a"]);
        assert!(book.owns_tap("tap0"));
        // A hot-plugged NIC changes the description: applied again.
        book.observe(
            &sink,
            Observation::Running(domain(A, "a", &["tap0", "tap1"])),
        );
        assert_eq!(sink.take_calls(), ["apply a"]);
        assert_eq!(sink.owned()[&A.parse().unwrap()], ["tap0", "tap1"]);
    }

    #[test]
    fn gone_removes_and_forgets() {
        let sink = FakeSink::default();
        let mut book = Book::new();
        book.observe(&sink, Observation::Running(domain(A, "a", &["tap0"])));
        book.observe(&sink, Observation::Gone(A.parse().unwrap()));
        assert!(!book.knows(&A.parse().unwrap()));
        assert!(sink.owned().is_empty());
        sink.take_calls();
        // Gone again (a STOPPED then an UNDEFINED event): nothing to do.
        book.observe(&sink, Observation::Gone(A.parse().unwrap()));
        assert!(sink.take_calls().is_empty());
    }

    #[test]
    fn an_unparsable_domain_is_not_served_and_logged_once() {
        let sink = FakeSink::default();
        let mut book = Book::new();
        book.observe(&sink, Observation::Running(domain(A, "a", &["tap0"])));
        let unparsable = Observation::Unparsable {
            uuid: A.parse().unwrap(),
            name: "a".into(),
            error: "nova metadata: bad".into(),
        };
        book.observe(&sink, unparsable.clone());
        assert!(sink.owned().is_empty(), "its ports are removed");
        assert!(book.knows(&A.parse().unwrap()), "still seen, for status");
        sink.take_calls();
        book.observe(&sink, unparsable);
        assert!(
            sink.take_calls().is_empty(),
            "the same problem again does nothing"
        );
        // Fixed: served again.
        book.observe(&sink, Observation::Running(domain(A, "a", &["tap0"])));
        assert_eq!(sink.take_calls(), ["apply a"]);
    }

    #[test]
    fn reconcile_removes_what_vanished_including_what_only_the_store_knew() {
        let sink = FakeSink::default();
        // From a previous daemon: B owned in the store, not in the book.
        sink.owned
            .lock()
            .unwrap()
            .insert(B.parse().unwrap(), vec!["tapb".into()]);
        let mut book = Book::new();
        book.reconcile(&sink, vec![Observation::Running(domain(A, "a", &["tapa"]))]);
        assert_eq!(
            sink.owned().into_keys().collect::<Vec<_>>(),
            vec![A.parse::<Uuid>().unwrap()]
        );
        // A vanishes while disconnected; B is back.
        book.reconcile(&sink, vec![Observation::Running(domain(B, "b", &["tapb"]))]);
        assert_eq!(
            sink.owned().into_keys().collect::<Vec<_>>(),
            vec![B.parse::<Uuid>().unwrap()]
        );
        let mut status = Status::new("libvirt", "qemu:///system");
        book.fill_status(&mut status, &sink.owned());
        assert_eq!((status.domains_seen, status.ports_owned), (1, 1));
        assert_eq!(status.domains[0].name, "b");
    }

    #[test]
    fn failures_are_retried() {
        let sink = FakeSink::default();
        let mut book = Book::new();
        *sink.fail.lock().unwrap() = true;
        book.observe(&sink, Observation::Running(domain(A, "a", &["tap0"])));
        assert!(book.has_retries());
        assert!(
            !book.knows(&A.parse().unwrap()),
            "not applied: applied again next time"
        );
        assert_eq!(book.take_retries().len(), 1);
        assert!(!book.has_retries());
        *sink.fail.lock().unwrap() = false;
        book.observe(&sink, Observation::Running(domain(A, "a", &["tap0"])));
        assert!(book.owns_tap("tap0"));
    }

    #[test]
    fn problems_are_kept_for_status() {
        let sink = FakeSink::default();
        *sink.problems.lock().unwrap() = vec!["no instance document".into()];
        let mut book = Book::new();
        book.observe(&sink, Observation::Running(domain(A, "a", &["tap0"])));
        let mut status = Status::new("libvirt", "qemu:///system");
        book.fill_status(&mut status, &sink.owned());
        assert_eq!(status.domains[0].problems, ["no instance document"]);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["connection"], "connecting");
        assert_eq!(json["domains"][0]["ports"][0], "tap0");
    }

    #[test]
    fn without_ports_lists_domains_seen_before_their_taps() {
        let sink = FakeSink::default();
        let mut book = Book::new();
        book.observe(&sink, Observation::Running(domain(A, "a", &[])));
        book.observe(&sink, Observation::Running(domain(B, "b", &["tapb"])));
        assert_eq!(book.without_ports(), vec![A.parse::<Uuid>().unwrap()]);
    }

    #[test]
    fn connection_changes_are_reported_once() {
        let mut status = Status::new("libvirt", "qemu:///system");
        assert!(status.set_connection(ConnectionState::Disconnected, Some("refused".into())));
        assert!(
            !status.set_connection(ConnectionState::Disconnected, Some("refused again".into()))
        );
        assert_eq!(status.last_error.as_deref(), Some("refused again"));
        assert!(status.set_connection(ConnectionState::Connected, None));
        assert_eq!(status.last_error, None);
    }

    #[test]
    fn documents_get_the_domains_uuid_and_name() {
        let uuid: Uuid = A.parse().unwrap();
        let json = document_json(r#" {"hostname": "web"} "#, &uuid, "dom-a").unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["uuid"], A);
        assert_eq!(value["name"], "dom-a");
        assert_eq!(value["hostname"], "web");
        // Its own uuid is fine in any spelling, its own name wins.
        let json = document_json(
            &format!(r#"{{"uuid": "{}", "name": "web-1"}}"#, A.to_uppercase()),
            &uuid,
            "dom-a",
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(value["name"], "web-1");

        for (text, expected) in [
            (format!(r#"{{"uuid": "{B}"}}"#), "is not the domain's"),
            (r#"{"uuid": 7}"#.to_string(), "is not the domain's"),
            ("[1, 2]".to_string(), "not a JSON object"),
            ("{".to_string(), "invalid JSON"),
            ("".to_string(), "invalid JSON"),
        ] {
            let err = document_json(&text, &uuid, "x").unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
