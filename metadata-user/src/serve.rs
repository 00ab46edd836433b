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
        local::{ApiConfig, ApiContext, PasswordError, PasswordStore},
        nova::{NovaBackend, config::BackendConfig},
        watch::{MAX_WATCHES_PER_PORT, WatchLimiter},
    },
    cli::{ServeArgs, settings::Settings},
    datapath::{self, Datapath, FlowTable, netdev, reconcile::Reconciler},
    ingress::{
        dispatch::Dispatcher,
        limits::ConnectionLimiter,
        neutron_agent,
        ratelimit::RateLimiter,
        server::{FlowLookup, GuestServer, Origin},
    },
    state::{PortPolicy, Registry, RegistryError},
};

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
    let registry =
        Registry::open_with_policy(&settings.state_dir, policy, settings.identity.max_slot())
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

    let connections = ConnectionLimiter::new(settings.connection_caps);
    raise_fd_limit(settings.connection_caps.total);
    let status: admin::server::StatusFn = {
        let settings = settings.clone();
        let responder = responder.clone();
        let connections = connections.clone();
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
                "connections": connections.stats(),
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
        connections,
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
