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
    admin::wire::TapState,
    backend::{
        Backend, Responder,
        local::{ApiConfig, ApiContext, PasswordConflict, PasswordStore},
        nova::{NovaBackend, config::BackendConfig},
        watch::{MAX_WATCHES_PER_PORT, WatchLimiter},
    },
    cli::{ServeArgs, settings::Settings},
    datapath::{
        self, Datapath, FlowTable, netdev,
        reconcile::{Reconciler, TapStates},
    },
    ingress::{
        dispatch::Dispatcher,
        limits::ConnectionLimiter,
        neutron_agent,
        ratelimit::RateLimiter,
        server::{FlowLookup, GuestServer, Origin},
    },
    state::{Port, PortPolicy, Registry},
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                // The netlink crates warn, with a whole message dump, about
                // every link event that arrives while a request handle shuts
                // down (e.g. our own veth pair going away on exit).
                tracing_subscriber::EnvFilter::new(
                    "info,netlink_packet_route=error,netlink_proto=error",
                )
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = Settings::resolve(args, admin_socket)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    let policy = match settings.backend {
        BackendConfig::Local => PortPolicy::LocalInstance,
        BackendConfig::Nova(_) => PortPolicy::NovaProject,
    };
    let registry = Registry::open_with_policy(&settings.state_dir, policy)
        .with_context(|| format!("--state-dir {}", settings.state_dir.display()))?;
    // Bind the admin socket first: it refuses to start a second daemon.
    let admin_listener = admin::server::bind(&settings.admin_socket)
        .with_context(|| format!("--admin-socket {}", settings.admin_socket.display()))?;

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
    let mut reconciler = Reconciler::new(datapath, netdev::current_links(&netlink).await?);
    reconciler.start(&registry.snapshot())?;
    let tap_states = reconciler.states();
    let attached_at_exit = tap_states.clone();
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
        BackendConfig::Nova(nova) => Backend::Nova(NovaBackend::with_identity(
            nova,
            settings.signed_identity.clone(),
        )),
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

    let view = Arc::new(DatapathStatus {
        settings: settings.clone(),
        responder: responder.clone(),
        counters,
        taps: tap_states.clone(),
    });
    let admin_task = tokio::spawn(admin::server::serve(admin_listener, registry.clone(), view));

    let guest_server = Arc::new(GuestServer {
        flows,
        registry: registry.clone(),
        dispatcher,
        connections: ConnectionLimiter::new(MAX_CONNECTIONS_PER_PORT),
    });
    let guest_task = tokio::spawn(guest_server.run(listener, shutdown_rx));
    info!(
        server = %format!("{}:{}", settings.identity.server_addr, settings.server_port),
        bpffs = %settings.bpffs.display(),
        "serving metadata"
    );

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => info!("SIGTERM: shutting down"),
        _ = sigint.recv() => info!("SIGINT: shutting down"),
    }
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
            for tap in attached_at_exit.borrow().attached.values() {
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

/// What the admin API shows of the datapath: its settings, the counters
/// and the taps' states as the reconciler last published them.
struct DatapathStatus {
    settings: Settings,
    responder: Arc<Responder>,
    counters: Arc<datapath::CounterTable>,
    taps: watch::Receiver<TapStates>,
}

impl admin::server::DatapathView for DatapathStatus {
    fn status(&self, taps: bool) -> serde_json::Value {
        let counters = self
            .counters
            .totals()
            .map(|c| {
                c.fields()
                    .into_iter()
                    .map(|(name, value)| (name.to_string(), serde_json::json!(value)))
                    .collect::<serde_json::Map<_, _>>()
            })
            .unwrap_or_default();
        let states = self.taps.borrow().clone();
        let settings = &self.settings;
        let mut status = serde_json::json!({
            "bpffs": settings.bpffs,
            "server": format!("{}:{}", settings.identity.server_addr, settings.server_port),
            "server_ifname": settings.link.server_ifname,
            "tap_attach": settings.tap_attach.as_str(),
            "backend": self.responder.status(),
            "taps": {
                "attached": states.attached.len(),
                "failing": states.failing.len(),
            },
            "counters": counters,
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
