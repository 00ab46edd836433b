//! `metadata-redirector serve`: wires the store, the datapath, the admin API
//! and the guest server together, and decides what a signal does. The only
//! module that knows every layer: the traits one layer asks another through
//! are implemented here (at the end of this file).
//!
//! SIGTERM / SIGINT: stop accepting, let in-flight requests finish (5 s),
//! close the admin socket and exit 0. The datapath stays pinned and attached
//! (unless `--detach-on-exit`), and so does the server's network namespace:
//! while no daemon runs, a guest's connection is refused at once (the server
//! address has no listener) instead of hanging, and a restarted daemon takes
//! over every tap without a gap. With socket activation the listener is not
//! ours to close: guests' connections wait in its queue until the next
//! daemon accepts them, so a restart refuses none (`ingress::handed_over`).
use std::{collections::BTreeMap, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use futures::StreamExt as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::info;
use uuid::Uuid;

use crate::{
    admin,
    admin::wire::TapState,
    backend::{
        Backend, Responder,
        local::{ApiConfig, ApiContext, PasswordError, PasswordStore},
        nova::{NovaBackend, config::BackendConfig},
        watch::{MAX_WATCHES_PER_PORT, WatchLimiter},
    },
    check,
    cli::{ServeArgs, settings::Settings},
    datapath::{
        self, Datapath, FlowTable, netdev,
        reconcile::{Reconciler, TapStates},
        server_link,
        server_netns::{self, ServerNetns},
    },
    discovery::{self, DiscoverConfig, DomainPorts, PortSink},
    exporter::{self, DiscoveryLive, Live, LiveFn, NovaLive},
    ingress::{
        dispatch::Dispatcher,
        handed_over,
        limits::ConnectionLimiter,
        neutron_agent,
        ratelimit::RateLimiter,
        server::{self, FlowLookup, GuestServer},
    },
    logging,
    metrics::{BackendLabel, Metrics},
    notify,
    state::{
        DomainSync, Port, PortAddRequest, PortPolicy, Registry, RegistryError, Source, SyncProblem,
    },
};

/// File descriptors the daemon needs besides guest connections: the store,
/// netlink, BPF objects, the admin and agent sockets, nova's pool.
const FD_RESERVE: u64 = 1024;

/// Raises the soft limit on open files to what `max_connections` guest
/// connections need (systemd starts services with a soft limit of 1024),
/// within the hard limit; warns when the hard limit is lower, since then
/// accept fails (EMFILE) before the cap is reached.
fn raise_fd_limit(max_connections: u32) {
    let wanted = u64::from(max_connections) + FD_RESERVE;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur >= wanted {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(limit.rlim_max),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 || raised.rlim_cur < wanted {
        tracing::warn!(
            max_connections,
            limit = raised.rlim_cur,
            "the open-file limit is lower than max_connections needs; raise LimitNOFILE"
        );
    }
}

pub fn run(args: ServeArgs, admin_socket: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(args, admin_socket)?;
    logging::init(settings.log_format);
    // Before anything is touched, and in the words `check` uses.
    check::kernel::require_supported()?;
    // libvirt is loaded only for discovery: a host without it fails here,
    // before anything is touched, not half way through the start.
    if let Some(DiscoverConfig::Libvirt { .. }) = &settings.discover {
        discovery::libvirt::ffi::load()
            .map_err(anyhow::Error::msg)
            .context("--discover libvirt")?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let (policy, backend_label) = match settings.backend {
        BackendConfig::Local => (PortPolicy::LocalInstance, BackendLabel::Local),
        BackendConfig::Nova(_) => (PortPolicy::NovaProject, BackendLabel::Nova),
    };
    let metrics = Arc::new(Metrics::new(backend_label));
    let registry = Registry::open_with(
        &settings.state_dir,
        policy,
        settings.identity.max_slot(),
        settings.store_sync,
    )
    .with_context(|| format!("--state-dir {}", settings.state_dir.display()))?;
    // Bind the admin socket first: it refuses to start a second daemon.
    let admin_listener = admin::server::bind(&settings.admin_socket)
        .with_context(|| format!("--admin-socket {}", settings.admin_socket.display()))?;
    // Bound before the datapath is touched: a wrong address fails the start
    // with nothing changed.
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(exporter::http::bind(addr).await?),
        None => None,
    };

    let netlink = netdev::connect()?;
    let netns = ServerNetns::ensure(&settings.server_netns)
        .with_context(|| format!("--server-netns {}", settings.server_netns))?;
    let netlink_inside = netdev::connect_in(&netns)?;
    let server_link =
        server_link::ensure_server_link(&netlink, &netns, &netlink_inside, &settings.link).await?;
    let datapath = Datapath::load(
        &settings.bpffs,
        settings.identity,
        &server_link,
        settings.server_port,
        settings.syn_rate_per_port,
        settings.tap_attach,
        &settings.metadata,
    )
    .with_context(|| format!("--bpffs {}", settings.bpffs.display()))?;
    let flows = datapath.flows();
    let counters = datapath.counters();
    // One listener (and thread) per core for the guest server: the ones
    // handed over by whoever holds them across restarts (socket
    // activation, see ingress::handed_over), or our own, made inside the
    // server's namespace (a socket stays in the namespace it was created
    // in).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server_addr, server_port) = (settings.identity.server_addr, settings.server_port);
    let handed_over = handed_over::take(server_addr, server_port, netns.fd())
        .context("socket activation (LISTEN_FDS)")?;
    let listeners = if handed_over.is_empty() {
        let runtime = tokio::runtime::Handle::current();
        netns
            .run(move || {
                let _entered = runtime.enter();
                server::listen(server_addr, server_port, cores)
            })
            .and_then(|listeners| Ok(listeners?))
            .with_context(|| {
                format!(
                    "listening on {}:{} in network namespace {}",
                    settings.identity.server_addr, settings.server_port, settings.server_netns
                )
            })?
    } else {
        info!(
            sockets = handed_over.len(),
            "listening on the sockets handed over (socket activation): guests' connections \
             wait in their queue across restarts"
        );
        handed_over::spread(handed_over, cores)?
    };

    // Subscribe to link events before listing links, so a tap created in
    // between is not missed.
    let link_events = netdev::watch_links()?;
    let mut reconciler = Reconciler::new(
        datapath,
        netdev::current_links(&netlink).await?,
        metrics.clone(),
    );
    reconciler.start(&registry.snapshot())?;
    let tap_states = reconciler.states();
    let attached_at_exit = tap_states.clone();
    let reconciler_task =
        tokio::spawn(reconciler.run(registry.subscribe(), link_events, netlink.clone()));
    let discovery = match &settings.discover {
        Some(config) => Some(start_discovery(config, &registry)?),
        None => None,
    };
    tokio::spawn(return_freed_memory(registry.subscribe()));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let backend = match &settings.backend {
        BackendConfig::Local => Backend::Local(
            ApiContext::new(
                ApiConfig {
                    domain: settings.domain.clone(),
                    ..ApiConfig::default()
                },
                registry.secret("imds-token-key")?,
                registry.clone(),
            )
            .with_identity(settings.signed_identity.clone()),
        ),
        BackendConfig::Nova(nova) => Backend::Nova(
            NovaBackend::with_identity(nova, settings.signed_identity.clone())
                .with_metrics(metrics.clone()),
        ),
    };
    if let Some(identity) = &settings.signed_identity {
        info!(
            kid = identity.key.kid(),
            alg = identity.key.kind().jws_alg(),
            issuer = %identity.issuer.name,
            "signing instance identities"
        );
    }
    let responder = Arc::new(Responder {
        backend,
        registry: registry.clone(),
        watches: WatchLimiter::new(MAX_WATCHES_PER_PORT),
        shutdown: shutdown_rx.clone(),
    });
    let dispatcher = Arc::new(Dispatcher {
        responder: responder.clone(),
        requests: RateLimiter::from_config(settings.rate_limit),
        metrics: metrics.clone(),
    });
    if let Some(path) = &settings.neutron_agent_socket {
        tokio::spawn(neutron_agent::serve(
            neutron_agent::bind(path)?,
            {
                let registry = registry.clone();
                Arc::new(move || registry.snapshot().ports.values().cloned().collect())
            },
            {
                let dispatcher = dispatcher.clone();
                Arc::new(move |guest, request| {
                    let dispatcher = dispatcher.clone();
                    Box::pin(async move { dispatcher.dispatch(&guest, request).await })
                })
            },
            shutdown_rx.clone(),
        ));
        info!(socket = %path.display(), "serving the neutron-metadata-agent protocol");
    }

    let connections = ConnectionLimiter::new(settings.connection_caps);
    raise_fd_limit(settings.connection_caps.total);

    if let Some(listener) = metrics_listener {
        let live = live_values(
            counters.clone(),
            tap_states.clone(),
            registry.clone(),
            responder.clone(),
            discovery.clone(),
        );
        info!(address = %listener.local_addr()?, "serving metrics at /metrics");
        tokio::spawn(exporter::http::serve(
            listener,
            metrics.clone(),
            live,
            shutdown_rx.clone(),
        ));
    }

    let view = Arc::new(DatapathStatus {
        settings: settings.clone(),
        responder: responder.clone(),
        counters,
        taps: tap_states.clone(),
        connections: connections.clone(),
    });
    let mut status_sections: Vec<(&'static str, admin::server::StatusFn)> = vec![];
    if let Some(discovery) = &discovery {
        let discovery = discovery.clone();
        status_sections.push((
            "discovery",
            Arc::new(move || serde_json::to_value(discovery.status()).unwrap_or_default()),
        ));
    }
    let admin_task = tokio::spawn(admin::server::serve(
        admin_listener,
        registry.clone(),
        view,
        status_sections,
    ));

    let guest_server = Arc::new(GuestServer {
        flows,
        registry: registry.clone(),
        dispatcher,
        connections,
    });
    let guest_threads = guest_server
        .run_threads(listeners, shutdown_rx)
        .context("starting the guest server's threads")?;
    let server = format!("{}:{}", settings.identity.server_addr, settings.server_port);
    info!(
        server,
        netns = settings.server_netns,
        bpffs = %settings.bpffs.display(),
        "serving metadata"
    );
    // The datapath is loaded and attached, and the listener is up.
    notify::ready(&format!("serving metadata at {server}"));

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
    notify::stopping();
    let _ = shutdown_tx.send(true);
    if let Some(discovery) = &discovery {
        discovery.stop();
    }
    // Each thread drains its connections (at most DRAIN_TIMEOUT), then ends.
    let _ = tokio::task::spawn_blocking(move || {
        for thread in guest_threads {
            let _ = thread.join();
        }
    })
    .await;
    admin_task.abort();
    let _ = std::fs::remove_file(&settings.admin_socket);
    if let Some(path) = &settings.neutron_agent_socket {
        let _ = std::fs::remove_file(path);
    }
    if settings.detach_on_exit {
        // Stopped first, so that nothing is attached behind our back.
        reconciler_task.abort();
        let _ = reconciler_task.await;
        if settings.tap_attach != datapath::TapAttach::Tcx {
            // tc filters and qdiscs are not pinned links: removing the pins
            // below does not take them off the taps.
            for tap in attached_at_exit.borrow().attached.values() {
                datapath::remove_tc_attachments(tap.ifindex);
            }
        }
        datapath::remove_pins(&settings.bpffs)?;
        server_link::delete_server_link(&netlink, &settings.link.entry_ifname).await?;
        drop(netlink_inside);
        drop(netns);
        server_netns::delete(&settings.server_netns)?;
        info!("datapath and server namespace removed");
    } else {
        info!(bpffs = %settings.bpffs.display(), "datapath left in place for the next daemon");
    }
    Ok(ExitCode::SUCCESS)
}

/// What the exporter reads at each scrape: the datapath's counters, the
/// attached taps, the store's size and nova's cache.
fn live_values(
    counters: Arc<datapath::CounterTable>,
    taps: watch::Receiver<TapStates>,
    registry: Arc<Registry>,
    responder: Arc<Responder>,
    discovery: Option<Arc<discovery::libvirt::Handle>>,
) -> LiveFn {
    Arc::new(move || {
        let snapshot = registry.snapshot();
        Live {
            // Both families (IPv4, IPv6) summed: status shows them apart.
            datapath: counters.by_family().ok().map(|by_family| {
                let mut total = metadata_ebpf::Counters::default();
                for (_, family) in &by_family {
                    total.accumulate(family);
                }
                total.fields().to_vec()
            }),
            ports_attached: taps.borrow().attached.len() as u64,
            store_instances: snapshot.instances.len() as u64,
            store_ports: snapshot.ports.len() as u64,
            instances_with_ports: snapshot
                .ports
                .values()
                .map(|port| port.spec.instance)
                .collect(),
            watches_held: u64::from(responder.watches.held()),
            discovery: discovery.as_ref().map(|discovery| {
                let status = discovery.status();
                DiscoveryLive {
                    connected: status.connection == discovery::ConnectionState::Connected,
                    domains_seen: status.domains_seen as u64,
                    ports_owned: status.ports_owned as u64,
                }
            }),
            nova: responder.nova_stats().map(|stats| NovaLive {
                upstream_requests: stats.upstream_requests,
                cache_hits: stats.cache.hits,
                cache_misses: stats.cache.misses,
                cache_coalesced: stats.cache.coalesced,
                cache_stale_served: stats.cache.stale_served,
                cache_entries: stats.cache.entries as u64,
                cache_bytes: stats.cache.bytes as u64,
            }),
        }
    })
}

/// Starts discovery feeding the registry, and hands it the two things it
/// learns from elsewhere: interfaces appearing on the host (a starting
/// domain's tap can be served before libvirt reports the start), and the
/// operator's changes (a manual port removed may free a domain's tap).
fn start_discovery(
    config: &DiscoverConfig,
    registry: &Arc<Registry>,
) -> anyhow::Result<Arc<discovery::libvirt::Handle>> {
    let DiscoverConfig::Libvirt { uri } = config;
    let handle = Arc::new(
        discovery::libvirt::start(uri, registry.clone() as Arc<dyn PortSink>)
            .context("--discover libvirt")?,
    );
    info!(%uri, "discovering ports from libvirt");
    let links = netdev::watch_links()?;
    tokio::spawn({
        let handle = handle.clone();
        async move {
            let mut links = std::pin::pin!(links);
            // Only an interface's first appearance: a tap being set up
            // sends several events (created, enslaved, up).
            let mut present = std::collections::HashSet::new();
            while let Some(event) = links.next().await {
                match event {
                    netdev::LinkEvent::Present { ifname, .. } => {
                        if present.insert(ifname.clone()) {
                            handle.link_appeared(&ifname);
                        }
                    }
                    netdev::LinkEvent::Gone { ifname, .. } => {
                        present.remove(&ifname);
                    }
                    netdev::LinkEvent::Lost => present.clear(),
                }
            }
        }
    });
    let mut changes = registry.manual_changes();
    tokio::spawn({
        let handle = handle.clone();
        async move {
            while changes.changed().await.is_ok() {
                handle.reapply();
            }
        }
    });
    Ok(handle)
}

/// How long the registry must stay unchanged before freed memory goes back.
const TRIM_WHEN_QUIET_FOR: std::time::Duration = std::time::Duration::from_millis(250);

/// Hands memory that registry writes freed back to the kernel. Every write
/// publishes a new snapshot and frees the one before it: a thousand
/// `instance put`s free a thousand growing copies of the instance map, and
/// glibc's malloc keeps what they leave behind resident wherever a live
/// block sits above it in the heap (the density phase caught 33 MiB of such
/// `[heap]` before any port was added, against 20 MiB in a daemon whose
/// writes happened to interleave better). `malloc_trim` returns every free
/// page of every arena, so RSS follows live memory once writes stop. It
/// locks each arena while it works, so it runs once a burst of writes (a
/// host booting its VMs) is over, never during one.
async fn return_freed_memory(mut snapshots: watch::Receiver<Arc<crate::state::Snapshot>>) {
    while snapshots.changed().await.is_ok() {
        loop {
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(TRIM_WHEN_QUIET_FOR) => break,
            }
        }
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
    }
}

// The ports between layers: each trait belongs to the layer that uses it,
// and is implemented here for the type of the layer that provides it, so
// neither layer imports the other.

/// The guest server learns who is behind a connection from the identity
/// address, and the guest's own address from the flow map.
impl FlowLookup for FlowTable {
    fn slot(&self, peer: std::net::Ipv4Addr) -> Option<u32> {
        FlowTable::slot(self, peer)
    }

    fn guest_addr(&self, peer: std::net::SocketAddrV4) -> Option<std::net::IpAddr> {
        let origin = FlowTable::origin(self, peer)?;
        Some(origin.flow.guest_ip())
    }
}

/// What the admin API shows of the datapath: its settings, the counters
/// and the taps' states as the reconciler last published them.
struct DatapathStatus {
    settings: Settings,
    responder: Arc<Responder>,
    counters: Arc<datapath::CounterTable>,
    taps: watch::Receiver<TapStates>,
    /// Open guest connections against their caps.
    connections: Arc<ConnectionLimiter>,
}

impl admin::server::DatapathView for DatapathStatus {
    fn status(&self, taps: bool) -> serde_json::Value {
        let as_json = |c: &metadata_ebpf::Counters| {
            c.fields()
                .into_iter()
                .map(|(name, value)| (name.to_string(), serde_json::json!(value)))
                .collect::<serde_json::Map<_, _>>()
        };
        let by_family = self.counters.by_family().unwrap_or_else(|_| {
            metadata_ebpf::Family::ALL.map(|family| (family, Default::default()))
        });
        let mut total = metadata_ebpf::Counters::default();
        for (_, family) in &by_family {
            total.accumulate(family);
        }
        let counters = as_json(&total);
        let counters_by_family: serde_json::Map<_, _> = by_family
            .iter()
            .map(|(family, c)| (family.name().to_string(), as_json(c).into()))
            .collect();
        let states = self.taps.borrow().clone();
        let settings = &self.settings;
        let mut status = serde_json::json!({
            "bpffs": settings.bpffs,
            "server": format!("{}:{}", settings.identity.server_addr, settings.server_port),
            "server_netns": settings.server_netns,
            "server_ifname": settings.link.server_ifname,
            "entry_ifname": settings.link.entry_ifname,
            "tap_attach": settings.tap_attach.as_str(),
            "backend": self.responder.status(),
            "taps": {
                "attached": states.attached.len(),
                "failing": states.failing.len(),
            },
            "metadata_addrs": {
                "ipv4": settings.metadata.ipv4,
                "ipv6": settings.metadata.ipv6,
            },
            "counters": counters,
            "counters_by_family": counters_by_family,
            "connections": self.connections.stats(),
        });
        if taps {
            status["attached_taps"] = states
                .attached
                .iter()
                .map(|(ifname, tap)| {
                    (
                        ifname.clone(),
                        serde_json::json!({ "ifindex": tap.ifindex, "slot": tap.slot }),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
            status["failing_taps"] = states
                .failing
                .iter()
                .map(|(ifname, error)| (ifname.clone(), serde_json::json!(error)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        status
    }

    fn tap_state(&self, port: &Port) -> TapState {
        let ifname = &port.spec.ifname;
        let states = self.taps.borrow();
        if let Some(tap) = states.attached.get(ifname) {
            return TapState::Attached {
                ifindex: tap.ifindex,
                slot: tap.slot,
            };
        }
        if let Some(error) = states.failing.get(ifname) {
            return TapState::Failing {
                error: error.clone(),
            };
        }
        match netdev::ifindex_of(ifname) {
            None => TapState::NoTap,
            Some(_) => TapState::Pending,
        }
    }

    fn next_change(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let mut taps = self.taps.clone();
        taps.mark_unchanged();
        Box::pin(async move {
            if taps.changed().await.is_err() {
                // The reconciler ended: nothing will change any more.
                std::future::pending::<()>().await;
            }
        })
    }
}

/// The guest API stores posted passwords in the registry. Only a password
/// already there is the guest's "conflict"; anything else the registry
/// refuses is the daemon's failure (500), logged here.
impl PasswordStore for Registry {
    fn password(&self, uuid: &uuid::Uuid) -> Result<Option<String>, PasswordError> {
        Registry::password(self, uuid).map_err(|err| {
            tracing::error!(%uuid, "reading the password: {err}");
            PasswordError::StoreFailed
        })
    }

    fn set_password(&self, uuid: &uuid::Uuid, password: &str) -> Result<(), PasswordError> {
        Registry::set_password(self, uuid, password).map_err(|err| match err {
            RegistryError::Conflict(_) => PasswordError::AlreadySet,
            err => {
                tracing::error!(%uuid, "password not stored: {err}");
                PasswordError::StoreFailed
            }
        })
    }
}

/// Discovery serves what it finds through the registry: each domain's taps
/// become ports bound to its UUID, owned by the domain (so the operator
/// cannot change them, and discovery never changes the operator's).
impl PortSink for Registry {
    fn apply(&self, domain: &DomainPorts) -> anyhow::Result<Vec<String>> {
        let mut problems = Vec::new();
        let default_name = domain.instance_name.as_deref().unwrap_or(&domain.name);
        let document = domain.document.as_deref().and_then(|text| {
            discovery::document_json(text, &domain.uuid, default_name)
                .inspect_err(|err| problems.push(format!("{err}: its guests get 404")))
                .ok()
        });
        let document_broken = !problems.is_empty();
        let sync = DomainSync {
            source: Source::Libvirt {
                domain: domain.name.clone(),
                domain_uuid: domain.uuid,
            },
            document,
            ports: domain
                .ports
                .iter()
                .map(|port| PortAddRequest {
                    ifname: port.ifname.clone(),
                    instance: domain.uuid.to_string(),
                    port_id: port.port_id.map(|id| id.to_string()),
                    mac: port.mac.clone(),
                    ips: port.ips.iter().map(ToString::to_string).collect(),
                    network_id: None,
                    project_id: domain.project_id.clone(),
                })
                .collect(),
        };
        for problem in self.sync_domain(sync)? {
            problems.push(match problem {
                SyncProblem::ManualPort { ifname, instance } => format!(
                    "tap {ifname} is a manual port (instance {instance}): left as it is, \
                     not served for this domain"
                ),
                SyncProblem::InvalidPort { ifname, error } => {
                    format!("tap {ifname} not served: {error}")
                }
                SyncProblem::ManualInstance => format!(
                    "instance {} was put by hand: the document in the domain's metadata \
                     is not used",
                    domain.uuid
                ),
                SyncProblem::InvalidDocument(error) => {
                    format!("instance document: {error}: its guests get 404")
                }
                // The broken document already said why.
                SyncProblem::NoDocument if document_broken => continue,
                SyncProblem::NoDocument => {
                    use discovery::libvirt::domain_xml::{
                        DOCUMENT_ELEMENT, DOCUMENT_KEY, DOCUMENT_NS,
                    };
                    format!(
                        "no instance document in the domain's metadata: its guests get 404 \
                         (virsh metadata {} --uri {DOCUMENT_NS} --key {DOCUMENT_KEY} \
                         --set '<{DOCUMENT_ELEMENT}>{{...}}</{DOCUMENT_ELEMENT}>')",
                        domain.name
                    )
                }
                SyncProblem::NoProject => "no project in the domain's nova metadata \
                     (<nova:owner><nova:project uuid=...>), so nova cannot be asked: \
                     its guests get an error"
                    .to_string(),
            });
        }
        Ok(problems)
    }

    fn remove(&self, uuid: &Uuid) -> anyhow::Result<()> {
        self.remove_domain(uuid)?;
        Ok(())
    }

    fn owned(&self) -> BTreeMap<Uuid, Vec<String>> {
        self.snapshot().discovered()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "7c1b6e0e-3e4f-4e59-9d5e-0a5a8b0c1d2e";

    /// A store write that fails (here: the table is gone behind the
    /// registry's back, as with a damaged database) is a StoreFailed, which
    /// the guest API answers with 500; before, every refusal was a conflict
    /// (409), telling the guest its password was kept.
    #[test]
    fn a_failed_password_write_is_a_store_failure_not_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(dir.path()).unwrap();
        registry
            .put_instance(format!(r#"{{"uuid": "{UUID}", "name": "a"}}"#).as_bytes())
            .unwrap();
        let uuid: uuid::Uuid = UUID.parse().unwrap();
        let store: &dyn PasswordStore = registry.as_ref();
        store.set_password(&uuid, "first").unwrap();
        assert_eq!(
            store.set_password(&uuid, "second"),
            Err(PasswordError::AlreadySet)
        );

        let conn = rusqlite::Connection::open(crate::state::store::db_path(dir.path())).unwrap();
        conn.execute_batch("DROP TABLE passwords").unwrap();
        assert_eq!(
            store.set_password(&uuid, "third"),
            Err(PasswordError::StoreFailed)
        );
        assert_eq!(store.password(&uuid), Err(PasswordError::StoreFailed));
    }
}
