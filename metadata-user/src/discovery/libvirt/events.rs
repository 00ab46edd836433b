//! libvirt's event loop and the events discovery listens to.
//!
//! libvirt delivers domain events, and notices a connection that closed or
//! stopped answering keepalives, only while some thread runs its event loop
//! (`virEventRunDefaultImpl`). One such thread runs for the daemon's life.
//! The callbacks run on it; they only read the domain's UUID (no call to
//! libvirtd) and send a message to discovery's worker thread, which does
//! the rest. Everything goes through [`ffi`], libvirt loaded at run time.
use std::{
    ffi::{c_char, c_int, c_void},
    sync::{OnceLock, mpsc::Sender},
    time::Instant,
};

use tracing::warn;
use uuid::Uuid;

use super::ffi::{self, Connect, ConnectPtr, DomainPtr, GenericCallback};

/// What the worker thread is told.
#[derive(Debug)]
pub enum Msg {
    /// Something about this domain changed: look at it again.
    Domain { uuid: Uuid, why: Why, at: Instant },
    /// The connection of this generation closed (libvirtd exited or
    /// restarted, or stopped answering keepalives).
    Closed { generation: u64, reason: i32 },
    /// A network interface appeared on the host: it may be the tap of a
    /// domain that is starting, before libvirt reports the start.
    LinkAppeared(String),
    /// The sink's state changed behind discovery's back (a manual port
    /// removed): apply again what was refused.
    Reapply,
    /// The daemon is exiting.
    Stop,
}

/// Which event it was (for the log, and the benchmark's timings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// `VIR_DOMAIN_EVENT_*` and its detail.
    Lifecycle {
        event: i32,
        detail: i32,
    },
    DeviceAdded,
    DeviceRemoved,
    MetadataChanged,
}

static EVENT_LOOP: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers libvirt's default event loop and starts the thread that runs
/// it, once per process (loading libvirt first). Must happen before the
/// first connection is opened.
pub fn start_event_loop() -> Result<(), String> {
    EVENT_LOOP
        .get_or_init(|| {
            ffi::silence_errors()?;
            ffi::event_register_default_impl()
                .map_err(|err| format!("registering libvirt's event loop: {err}"))?;
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        if let Err(err) = ffi::event_run_default_impl() {
                            warn!("libvirt's event loop: {err}");
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                })
                .map_err(|err| format!("starting libvirt's event thread: {err}"))?;
            Ok(())
        })
        .clone()
}

/// The callbacks registered on one connection.
pub struct Subscription {
    ids: Vec<c_int>,
    close_registered: bool,
}

/// What each callback owns: where to send, and which connection it is.
struct Opaque {
    tx: Sender<Msg>,
    generation: u64,
}

/// Registers the domain events (lifecycle, device added and removed,
/// metadata changed) and the close callback on `conn`; each sends to `tx`.
pub fn subscribe(
    conn: &Connect,
    tx: &Sender<Msg>,
    generation: u64,
) -> Result<Subscription, ffi::Error> {
    let mut subscription = Subscription {
        ids: Vec::new(),
        close_registered: false,
    };
    // SAFETY: each callback's type is the one libvirt documents for its
    // event id (the generic pointer type is how the C API takes them all);
    // the opaque pointer is a leaked Box<Opaque> that libvirt hands back to
    // free_opaque exactly once, when the callback is deregistered or the
    // connection is freed.
    unsafe {
        let callbacks: [(c_int, GenericCallback); 4] = [
            (
                ffi::EVENT_ID_LIFECYCLE,
                std::mem::transmute::<
                    unsafe extern "C" fn(ConnectPtr, DomainPtr, c_int, c_int, *mut c_void) -> c_int,
                    GenericCallback,
                >(on_lifecycle),
            ),
            (
                ffi::EVENT_ID_DEVICE_ADDED,
                std::mem::transmute::<
                    unsafe extern "C" fn(ConnectPtr, DomainPtr, *const c_char, *mut c_void),
                    GenericCallback,
                >(on_device_added),
            ),
            (
                ffi::EVENT_ID_DEVICE_REMOVED,
                std::mem::transmute::<
                    unsafe extern "C" fn(ConnectPtr, DomainPtr, *const c_char, *mut c_void),
                    GenericCallback,
                >(on_device_removed),
            ),
            (
                ffi::EVENT_ID_METADATA_CHANGE,
                std::mem::transmute::<
                    unsafe extern "C" fn(ConnectPtr, DomainPtr, c_int, *const c_char, *mut c_void),
                    GenericCallback,
                >(on_metadata_change),
            ),
        ];
        for (event_id, callback) in callbacks {
            let opaque = Box::into_raw(Box::new(Opaque {
                tx: tx.clone(),
                generation,
            }));
            match conn.domain_event_register_any(event_id, callback, opaque.cast(), free_opaque) {
                Ok(id) => subscription.ids.push(id),
                Err(err) => {
                    drop(Box::from_raw(opaque));
                    unsubscribe(conn, subscription);
                    return Err(err);
                }
            }
        }
        let opaque = Box::into_raw(Box::new(Opaque {
            tx: tx.clone(),
            generation,
        }));
        if let Err(err) = conn.register_close_callback(on_close, opaque.cast(), free_opaque) {
            drop(Box::from_raw(opaque));
            unsubscribe(conn, subscription);
            return Err(err);
        }
        subscription.close_registered = true;
    }
    Ok(subscription)
}

/// Deregisters what [`subscribe`] registered (best effort: on a connection
/// that is already closed this fails, and closing frees them anyway).
pub fn unsubscribe(conn: &Connect, subscription: Subscription) {
    for id in subscription.ids {
        conn.domain_event_deregister_any(id);
    }
    if subscription.close_registered {
        conn.unregister_close_callback(on_close);
    }
}

unsafe extern "C" fn free_opaque(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: allocated by Box::into_raw in subscribe; libvirt frees once.
        drop(unsafe { Box::from_raw(opaque.cast::<Opaque>()) });
    }
}

unsafe fn send_domain(dom: DomainPtr, opaque: *mut c_void, why: Why) {
    let at = Instant::now();
    // SAFETY: opaque is the Box<Opaque> registered with this callback.
    let opaque = unsafe { &*opaque.cast::<Opaque>() };
    // SAFETY: dom is valid for the callback's duration.
    if let Some(uuid) = unsafe { ffi::callback_domain_uuid(dom) } {
        // The worker gone means the daemon is exiting: nothing to do.
        let _ = opaque.tx.send(Msg::Domain { uuid, why, at });
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: ConnectPtr,
    dom: DomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: called by libvirt with a valid domain and our opaque.
    unsafe { send_domain(dom, opaque, Why::Lifecycle { event, detail }) };
    0
}

unsafe extern "C" fn on_device_added(
    _conn: ConnectPtr,
    dom: DomainPtr,
    _alias: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: as above.
    unsafe { send_domain(dom, opaque, Why::DeviceAdded) };
}

unsafe extern "C" fn on_device_removed(
    _conn: ConnectPtr,
    dom: DomainPtr,
    _alias: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: as above.
    unsafe { send_domain(dom, opaque, Why::DeviceRemoved) };
}

unsafe extern "C" fn on_metadata_change(
    _conn: ConnectPtr,
    dom: DomainPtr,
    _kind: c_int,
    _nsuri: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: as above.
    unsafe { send_domain(dom, opaque, Why::MetadataChanged) };
}

unsafe extern "C" fn on_close(_conn: ConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: opaque is the Box<Opaque> registered with the close callback.
    let opaque = unsafe { &*opaque.cast::<Opaque>() };
    let _ = opaque.tx.send(Msg::Closed {
        generation: opaque.generation,
        reason,
    });
}

/// `VIR_CONNECT_CLOSE_REASON_*` in words.
pub fn close_reason(reason: i32) -> &'static str {
    match reason {
        ffi::CLOSE_REASON_ERROR => "a socket error",
        ffi::CLOSE_REASON_EOF => "libvirtd closed it",
        ffi::CLOSE_REASON_KEEPALIVE => "keepalive timeout",
        ffi::CLOSE_REASON_CLIENT => "closed by us",
        _ => "unknown reason",
    }
}
