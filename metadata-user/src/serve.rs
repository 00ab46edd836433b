//! `metadata-redirector serve`: wires the store, the datapath, the admin API
//! and the guest server together, and decides what a signal does. The only
//! module that knows every layer: the traits one layer asks another through
//! are implemented here (at the end of this file).
//!
//! SIGTERM / SIGINT: stop accepting, let in-flight requests finish (5 s),
//! close the admin socket and exit 0. The datapath stays pinned and attached
//! (unless `--detach-on-exit`): while no daemon runs, a guest's connection is
//! refused at once (the server address has no listener) instead of hanging,
//! and a restarted daemon takes over every tap without a gap.
use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::info;

use crate::{
    admin,
    backend::{
        Backend, Responder,
        local::{ApiConfig, ApiContext, PasswordConflict, PasswordStore},
        nova::{NovaBackend, config::BackendConfig},
        watch::{MAX_WATCHES_PER_PORT, WatchLimiter},
    },
    check,
    cli::{ServeArgs, settings::Settings},
    datapath::{self, Datapath, FlowTable, netdev, reconcile::Reconciler},
    exporter::{self, Live, LiveFn, NovaLive},
    ingress::{
        dispatch::Dispatcher,
        limits::ConnectionLimiter,
        neutron_agent,
        ratelimit::RateLimiter,
        server::{FlowLookup, GuestServer, Origin},
    },
    logging,
    metrics::{BackendLabel, Metrics},
    notify,
    state::{PortPolicy, Registry},
};

/// Open connections one port may hold. cloud-init uses one at a time; a
/// guest's parallel tooling rarely needs more than a few. Held watches
/// (`?wait_for_change=true`, at most 16 per port) count here too.
const MAX_CONNECTIONS_PER_PORT: u32 = 64;

/// Accept queue length asked for (the kernel caps it at net.core.somaxconn,
/// 4096 by default). Every guest of the host connects to this one socket: in
/// a boot storm hundreds of handshakes complete at once, and a full queue
/// drops them, costing each guest a 1 s SYN retransmit. The default backlog
/// of tokio's `TcpListener::bind` (mio's, 128) overflowed with 500 guests in
/// `cargo xtask bench`.
const LISTEN_BACKLOG: u32 = 65_535;

fn listen(addr: std::net::Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind((addr, port).into())?;
    socket.listen(LISTEN_BACKLOG)
}

pub fn run(args: ServeArgs, admin_socket: std::path::PathBuf) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(args, admin_socket)?;
    logging::init(settings.log_format);
    // Before anything is touched, and in the words `check` uses.
    check::kernel::require_supported()?;
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
    let registry = Registry::open_with_policy(&settings.state_dir, policy)
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
    let server_link = netdev::ensure_server_link(&netlink, &settings.link).await?;
    let datapath = Datapath::load(
        &settings.bpffs,
        settings.identity,
        &server_link,
        settings.server_port,
        settings.syn_rate_per_port,
        settings.tap_attach,
    )
    .with_context(|| format!("--bpffs {}", settings.bpffs.display()))?;
    let flows = datapath.flows();
    let counters = datapath.counters();
    let listener =
        listen(settings.identity.server_addr, settings.server_port).with_context(|| {
            format!(
                "listening on {}:{}",
                settings.identity.server_addr, settings.server_port
            )
        })?;

    // Subscribe to link events before listing links, so a tap created in
    // between is not missed.
    let link_events = netdev::watch_links()?;
    let mut reconciler = Reconciler::new(
        datapath,
        netdev::current_links(&netlink).await?,
        metrics.clone(),
    );
    reconciler.start(&registry.snapshot())?;
    let attached = reconciler.attached();
    let attached_at_exit = attached.clone();
    let reconciler_task =
        tokio::spawn(reconciler.run(registry.subscribe(), link_events, netlink.clone()));

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

    if let Some(listener) = metrics_listener {
        let live = live_values(
            counters.clone(),
            attached.clone(),
            registry.clone(),
            responder.clone(),
        );
        info!(address = %listener.local_addr()?, "serving metrics at /metrics");
        tokio::spawn(exporter::http::serve(
            listener,
            metrics.clone(),
            live,
            shutdown_rx.clone(),
        ));
    }

    let status: admin::server::StatusFn = {
        let settings = settings.clone();
        let responder = responder.clone();
        Arc::new(move || {
            let counters = counters
                .totals()
                .map(|c| {
                    c.fields()
                        .into_iter()
                        .map(|(name, value)| (name.to_string(), serde_json::json!(value)))
                        .collect::<serde_json::Map<_, _>>()
                })
                .unwrap_or_default();
            let taps: serde_json::Map<_, _> = attached
                .borrow()
                .iter()
                .map(|(ifname, tap)| {
                    (
                        ifname.clone(),
                        serde_json::json!({ "ifindex": tap.ifindex, "slot": tap.slot }),
                    )
                })
                .collect();
            serde_json::json!({
                "bpffs": settings.bpffs,
                "server": format!("{}:{}", settings.identity.server_addr, settings.server_port),
                "server_ifname": settings.link.server_ifname,
                "tap_attach": settings.tap_attach.as_str(),
                "backend": responder.status(),
                "attached_taps": taps,
                "counters": counters,
            })
        })
    };
    let admin_task = tokio::spawn(admin::server::serve(
        admin_listener,
        registry.clone(),
        status,
    ));

    let guest_server = Arc::new(GuestServer {
        flows,
        registry: registry.clone(),
        dispatcher,
        connections: ConnectionLimiter::new(MAX_CONNECTIONS_PER_PORT),
    });
    let guest_task = tokio::spawn(guest_server.run(listener, shutdown_rx));
    let server = format!("{}:{}", settings.identity.server_addr, settings.server_port);
    info!(
        server,
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
    let _ = guest_task.await;
    admin_task.abort();
    let _ = std::fs::remove_file(&settings.admin_socket);
    if let Some(path) = &settings.neutron_agent_socket {
        let _ = std::fs::remove_file(path);
    }
    if settings.detach_on_exit {
        // Stopped first, so that nothing is attached behind our back.
        reconciler_task.abort();
        let _ = reconciler_task.await;
        if settings.tap_attach == datapath::TapAttach::Tc {
            // tc filters are not pinned links: removing the pins below does
            // not take them off the taps.
            for tap in attached_at_exit.borrow().values() {
                datapath::tc_attach::remove_tc_filter(tap.ifindex);
            }
        }
        datapath::remove_pins(&settings.bpffs)?;
        netdev::delete_server_link(&netlink, &settings.link.server_ifname).await?;
        info!("datapath removed");
    } else {
        info!(bpffs = %settings.bpffs.display(), "datapath left in place for the next daemon");
    }
    Ok(ExitCode::SUCCESS)
}

/// What the exporter reads at each scrape: the datapath's counters, the
/// attached taps, the store's size and nova's cache.
fn live_values(
    counters: Arc<datapath::CounterTable>,
    attached: watch::Receiver<std::collections::BTreeMap<String, datapath::AttachedTap>>,
    registry: Arc<Registry>,
    responder: Arc<Responder>,
) -> LiveFn {
    Arc::new(move || {
        let snapshot = registry.snapshot();
        Live {
            datapath: counters
                .totals()
                .ok()
                .map(|totals| totals.fields().to_vec()),
            ports_attached: attached.borrow().len() as u64,
            store_instances: snapshot.instances.len() as u64,
            store_ports: snapshot.ports.len() as u64,
            instances_with_ports: snapshot
                .ports
                .values()
                .map(|port| port.spec.instance)
                .collect(),
            nova: responder.nova_stats().map(|stats| NovaLive {
                upstream_requests: stats.upstream_requests,
                cache_hits: stats.cache.hits,
                cache_misses: stats.cache.misses,
                cache_coalesced: stats.cache.coalesced,
                cache_entries: stats.cache.entries as u64,
                cache_bytes: stats.cache.bytes as u64,
            }),
        }
    })
}

// The ports between layers: each trait belongs to the layer that uses it,
// and is implemented here for the type of the layer that provides it, so
// neither layer imports the other.

/// The guest server learns who is behind a connection from the flow map.
impl FlowLookup for FlowTable {
    fn origin(&self, peer: std::net::SocketAddrV4) -> Option<Origin> {
        let origin = FlowTable::origin(self, peer)?;
        Some(Origin {
            slot: origin.slot,
            guest_addr: origin.flow.guest_addr.into(),
        })
    }
}

/// The guest API stores posted passwords in the registry.
impl PasswordStore for Registry {
    fn password(&self, uuid: &uuid::Uuid) -> Option<String> {
        Registry::password(self, uuid)
    }

    fn set_password(&self, uuid: &uuid::Uuid, password: &str) -> Result<(), PasswordConflict> {
        Registry::set_password(self, uuid, password).map_err(|err| {
            tracing::warn!(%uuid, "password not stored: {err}");
            PasswordConflict
        })
    }
}
