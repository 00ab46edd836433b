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
    },
    cli::{ServeArgs, settings::Settings},
    datapath::{self, Datapath, FlowTable, netdev, reconcile::Reconciler},
    ingress::{
        dispatch::Dispatcher,
        limits::ConnectionLimiter,
        neutron_agent,
        ratelimit::RateLimiter,
        server::{self, FlowLookup, GuestServer},
    },
    state::{PortPolicy, Registry},
};

/// Open connections one port may hold. cloud-init uses one at a time; a
/// guest's parallel tooling rarely needs more than a few.
const MAX_CONNECTIONS_PER_PORT: u32 = 64;

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
    // One listener (and thread) per core for the guest server.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listeners = server::listen(settings.identity.server_addr, settings.server_port, cores)
        .with_context(|| {
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
    let attached = reconciler.attached();
    let attached_at_exit = attached.clone();
    let reconciler_task =
        tokio::spawn(reconciler.run(registry.subscribe(), link_events, netlink.clone()));
    tokio::spawn(return_freed_memory(registry.subscribe()));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let backend = match &settings.backend {
        BackendConfig::Local => Backend::Local(ApiContext::new(
            ApiConfig {
                domain: settings.domain.clone(),
                ..ApiConfig::default()
            },
            registry.secret("imds-token-key")?,
            registry.clone(),
        )),
        BackendConfig::Nova(nova) => Backend::Nova(NovaBackend::new(nova)),
    };
    let responder = Arc::new(Responder {
        backend,
        registry: registry.clone(),
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
    let guest_threads = guest_server
        .run_threads(listeners, shutdown_rx)
        .context("starting the guest server's threads")?;
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

    fn guest_addr(&self, peer: std::net::SocketAddrV4) -> Option<std::net::Ipv4Addr> {
        let origin = FlowTable::origin(self, peer)?;
        Some(origin.flow.guest_addr.into())
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
