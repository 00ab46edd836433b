//! libvirt's client library, loaded at run time, and the few calls
//! discovery makes through it.
//!
//! Why hand-written: linking libvirt (as the `virt` crate does) puts
//! `libvirt.so.0` in the binary's NEEDED entries, and the dynamic loader
//! then maps and relocates it and its ~50 dependencies (glib, gnutls, ICU,
//! curl, Kerberos) at every start of every CLI command, about 20 ms each,
//! although only `serve --discover libvirt` uses it. No crate loads libvirt
//! at run time, so this module opens `libvirt.so.0` with `libloading` the
//! first time discovery starts and resolves only the functions discovery
//! calls. The C types and constants below are libvirt's stable ABI
//! (`libvirt-host.h`, `libvirt-domain.h`, `virterror.h`; unchanged since
//! the versions that introduced them).
//!
//! [`Connect`] and [`Domain`] own their libvirt references (closed and
//! freed on drop); [`Error`] is libvirt's last error of the calling thread.
use std::{
    ffi::{CStr, CString, c_char, c_int, c_uchar, c_uint, c_void},
    fmt,
    ptr::{self, NonNull},
    sync::OnceLock,
};

use libloading::Library;
use uuid::Uuid;

/// The library's soname, as Debian's `libvirt0` installs it.
pub const LIBRARY: &str = "libvirt.so.0";
/// The Debian package that has [`LIBRARY`].
pub const PACKAGE: &str = "libvirt0";

/// `virConnectPtr`: libvirt's opaque connection.
pub type ConnectPtr = *mut c_void;
/// `virDomainPtr`: libvirt's opaque domain reference.
pub type DomainPtr = *mut c_void;
/// `virConnectDomainEventGenericCallback`: how `virConnectDomainEventRegisterAny`
/// takes every event's callback (each event id has its own real signature).
pub type GenericCallback = unsafe extern "C" fn(ConnectPtr, DomainPtr, *mut c_void);
/// `virFreeCallback`: frees a callback's opaque pointer.
pub type FreeCallback = unsafe extern "C" fn(*mut c_void);
/// `virConnectCloseFunc`.
pub type CloseCallback = unsafe extern "C" fn(ConnectPtr, c_int, *mut c_void);
/// `virErrorFunc`.
type ErrorFunc = unsafe extern "C" fn(*mut c_void, *mut VirError);

/// The leading fields of `virError` (the only ones read; libvirt owns the
/// struct and only a pointer to it is ever held).
#[repr(C)]
struct VirError {
    code: c_int,
    domain: c_int,
    message: *mut c_char,
}

/// `VIR_CONNECT_LIST_DOMAINS_ACTIVE`.
const LIST_DOMAINS_ACTIVE: c_uint = 1;
/// `VIR_ERR_INTERNAL_ERROR`.
const ERR_INTERNAL_ERROR: c_int = 1;
/// `VIR_ERR_NO_DOMAIN`.
const ERR_NO_DOMAIN: c_int = 42;
/// `VIR_UUID_BUFLEN`, `VIR_UUID_STRING_BUFLEN`.
const UUID_BUFLEN: usize = 16;
const UUID_STRING_BUFLEN: usize = 37;

/// `VIR_DOMAIN_EVENT_ID_*`: the events discovery registers.
pub const EVENT_ID_LIFECYCLE: c_int = 0;
pub const EVENT_ID_DEVICE_REMOVED: c_int = 15;
pub const EVENT_ID_DEVICE_ADDED: c_int = 19;
pub const EVENT_ID_METADATA_CHANGE: c_int = 23;

/// `VIR_CONNECT_CLOSE_REASON_*`.
pub const CLOSE_REASON_ERROR: c_int = 0;
pub const CLOSE_REASON_EOF: c_int = 1;
pub const CLOSE_REASON_KEEPALIVE: c_int = 2;
pub const CLOSE_REASON_CLIENT: c_int = 3;

/// `VIR_DOMAIN_METADATA_ELEMENT` and `VIR_DOMAIN_AFFECT_LIVE` (tests only).
#[cfg(test)]
pub const METADATA_ELEMENT: c_int = 2;
#[cfg(test)]
pub const AFFECT_LIVE: c_uint = 1;

/// Declares the function table: one field per libvirt function, resolved
/// by its own name when the library is loaded.
macro_rules! functions {
    ($($(#[$attr:meta])* $name:ident: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        #[allow(non_snake_case)]
        struct Functions {
            $($(#[$attr])* $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        impl Functions {
            /// # Safety
            /// `library` must be libvirt's client library: each symbol is
            /// taken to have the signature declared for it here.
            unsafe fn resolve(library: &Library) -> Result<Functions, String> {
                Ok(Functions {
                    $($(#[$attr])* $name: *unsafe {
                        library.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(
                            concat!(stringify!($name), "\0").as_bytes(),
                        )
                    }
                    .map_err(|err| format!("{}: {}", stringify!($name), with_source(&err)))?,)*
                })
            }
        }
    };
}

functions! {
    virConnectOpen: fn(*const c_char) -> ConnectPtr;
    virConnectClose: fn(ConnectPtr) -> c_int;
    virConnectSetKeepAlive: fn(ConnectPtr, c_int, c_uint) -> c_int;
    virConnectIsAlive: fn(ConnectPtr) -> c_int;
    virConnectListAllDomains: fn(ConnectPtr, *mut *mut DomainPtr, c_uint) -> c_int;
    virDomainLookupByUUIDString: fn(ConnectPtr, *const c_char) -> DomainPtr;
    virDomainGetUUID: fn(DomainPtr, *mut c_uchar) -> c_int;
    virDomainGetUUIDString: fn(DomainPtr, *mut c_char) -> c_int;
    virDomainGetXMLDesc: fn(DomainPtr, c_uint) -> *mut c_char;
    virDomainIsActive: fn(DomainPtr) -> c_int;
    virDomainGetName: fn(DomainPtr) -> *const c_char;
    virDomainFree: fn(DomainPtr) -> c_int;
    virGetLastError: fn() -> *mut VirError;
    virSetErrorFunc: fn(*mut c_void, Option<ErrorFunc>);
    virEventRegisterDefaultImpl: fn() -> c_int;
    virEventRunDefaultImpl: fn() -> c_int;
    virConnectDomainEventRegisterAny:
        fn(ConnectPtr, DomainPtr, c_int, Option<GenericCallback>, *mut c_void, Option<FreeCallback>) -> c_int;
    virConnectDomainEventDeregisterAny: fn(ConnectPtr, c_int) -> c_int;
    virConnectRegisterCloseCallback:
        fn(ConnectPtr, Option<CloseCallback>, *mut c_void, Option<FreeCallback>) -> c_int;
    virConnectUnregisterCloseCallback: fn(ConnectPtr, Option<CloseCallback>) -> c_int;
    #[cfg(test)]
    virDomainCreateXML: fn(ConnectPtr, *const c_char, c_uint) -> DomainPtr;
    #[cfg(test)]
    virDomainSetMetadata: fn(DomainPtr, c_int, *const c_char, *const c_char, *const c_char, c_uint) -> c_int;
    #[cfg(test)]
    virDomainDestroy: fn(DomainPtr) -> c_int;
}

/// The loaded library and its functions, for the rest of the process.
struct Libvirt {
    functions: Functions,
    /// Never unloaded: its threads and callbacks live as long as we do.
    _library: Library,
}

static LIBVIRT: OnceLock<Result<Libvirt, String>> = OnceLock::new();

/// Loads libvirt's client library once per process (later calls return
/// the first call's outcome). The error names the library and the package
/// that installs it.
pub fn load() -> Result<(), String> {
    functions().map(|_| ())
}

fn functions() -> Result<&'static Functions, String> {
    LIBVIRT
        .get_or_init(|| open(LIBRARY))
        .as_ref()
        .map(|libvirt| &libvirt.functions)
        .map_err(Clone::clone)
}

/// Opens `file` as libvirt's client library.
fn open(file: &str) -> Result<Libvirt, String> {
    let missing = |why: String| {
        format!("cannot load libvirt's client library {file} (Debian package {PACKAGE}): {why}")
    };
    // SAFETY: libvirt's initializers only set up its own state.
    let library = unsafe { Library::new(file) }.map_err(|err| missing(with_source(&err)))?;
    // SAFETY: the library just opened is libvirt's (its soname).
    let functions = unsafe { Functions::resolve(&library) }.map_err(missing)?;
    Ok(Libvirt {
        functions,
        _library: library,
    })
}

/// libloading's error with dlerror's text (its Display alone says only
/// "dlopen failed").
fn with_source(err: &libloading::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => source.to_string(),
        None => err.to_string(),
    }
}

/// The functions of a library that is loaded: every value of the types
/// below was made through them, so they are.
fn loaded() -> &'static Functions {
    match LIBVIRT.get() {
        Some(Ok(libvirt)) => &libvirt.functions,
        _ => unreachable!("libvirt objects exist only once the library is loaded"),
    }
}

/// libvirt's last error on this thread, after a call that failed.
#[derive(Clone, Debug)]
pub struct Error {
    code: c_int,
    message: String,
}

impl Error {
    fn last() -> Error {
        // SAFETY: virGetLastError returns this thread's error or NULL; its
        // message is a NUL-terminated string or NULL.
        unsafe {
            let err = (loaded().virGetLastError)();
            if err.is_null() {
                return Error {
                    code: ERR_INTERNAL_ERROR,
                    message: "an unknown libvirt error occurred".into(),
                };
            }
            let message = (*err).message;
            Error {
                code: (*err).code,
                message: if message.is_null() {
                    format!("libvirt error {} (domain {})", (*err).code, (*err).domain)
                } else {
                    CStr::from_ptr(message).to_string_lossy().into_owned()
                },
            }
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The domain does not exist (any more).
    pub fn is_no_domain(&self) -> bool {
        self.code == ERR_NO_DOMAIN
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Turns libvirt's `-1` into the last error.
fn check(ret: c_int) -> Result<c_int, Error> {
    if ret < 0 { Err(Error::last()) } else { Ok(ret) }
}

fn c_string(text: &str) -> Result<CString, Error> {
    CString::new(text).map_err(|_| Error {
        code: ERR_INTERNAL_ERROR,
        message: format!("{text:?} contains a NUL byte"),
    })
}

/// Replaces libvirt's default error handler, which prints every error to
/// stderr (discovery logs the ones that matter itself).
pub fn silence_errors() -> Result<(), String> {
    unsafe extern "C" fn ignore(_user: *mut c_void, _err: *mut VirError) {}
    let functions = functions()?;
    // SAFETY: a handler that does nothing, valid for the process's life.
    unsafe { (functions.virSetErrorFunc)(ptr::null_mut(), Some(ignore)) };
    Ok(())
}

/// `virEventRegisterDefaultImpl`: before the first connection is opened.
pub fn event_register_default_impl() -> Result<(), String> {
    let functions = functions()?;
    // SAFETY: no arguments; libvirt sets up its own event loop.
    check(unsafe { (functions.virEventRegisterDefaultImpl)() })
        .map(|_| ())
        .map_err(|err| err.message)
}

/// `virEventRunDefaultImpl`: one iteration of libvirt's event loop.
pub fn event_run_default_impl() -> Result<(), Error> {
    // SAFETY: no arguments; called only after the registration above.
    check(unsafe { (loaded().virEventRunDefaultImpl)() }).map(|_| ())
}

/// A connection to a libvirt (one reference, closed on drop).
pub struct Connect {
    ptr: NonNull<c_void>,
}

// SAFETY: libvirt's connections may be used from any thread (libvirt
// locks them itself); discovery moves one into its worker thread.
unsafe impl Send for Connect {}

impl Connect {
    pub fn open(uri: &str) -> Result<Connect, Error> {
        let functions = functions().map_err(|message| Error {
            code: ERR_INTERNAL_ERROR,
            message,
        })?;
        let uri = c_string(uri)?;
        // SAFETY: uri is a NUL-terminated string for the call's duration.
        let ptr = unsafe { (functions.virConnectOpen)(uri.as_ptr()) };
        NonNull::new(ptr)
            .map(|ptr| Connect { ptr })
            .ok_or_else(Error::last)
    }

    pub fn as_ptr(&self) -> ConnectPtr {
        self.ptr.as_ptr()
    }

    pub fn set_keep_alive(&self, interval: i32, count: u32) -> Result<(), Error> {
        // SAFETY: a live connection.
        check(unsafe { (loaded().virConnectSetKeepAlive)(self.as_ptr(), interval, count) })
            .map(|_| ())
    }

    pub fn is_alive(&self) -> Result<bool, Error> {
        // SAFETY: a live connection.
        check(unsafe { (loaded().virConnectIsAlive)(self.as_ptr()) }).map(|alive| alive == 1)
    }

    /// `virConnectListAllDomains` with `VIR_CONNECT_LIST_DOMAINS_ACTIVE`.
    pub fn list_active_domains(&self) -> Result<Vec<Domain>, Error> {
        let functions = loaded();
        let mut array: *mut DomainPtr = ptr::null_mut();
        // SAFETY: libvirt fills array with `count` references that are now
        // ours, in an array allocated with malloc.
        unsafe {
            let count = check((functions.virConnectListAllDomains)(
                self.as_ptr(),
                &mut array,
                LIST_DOMAINS_ACTIVE,
            ))?;
            let domains = (0..count as usize)
                .filter_map(|index| NonNull::new(*array.add(index)))
                .map(|ptr| Domain { ptr })
                .collect();
            libc::free(array.cast());
            Ok(domains)
        }
    }

    pub fn lookup_by_uuid(&self, uuid: &Uuid) -> Result<Domain, Error> {
        let text = c_string(&uuid.to_string())?;
        // SAFETY: a live connection, a NUL-terminated string.
        let ptr = unsafe { (loaded().virDomainLookupByUUIDString)(self.as_ptr(), text.as_ptr()) };
        NonNull::new(ptr)
            .map(|ptr| Domain { ptr })
            .ok_or_else(Error::last)
    }

    /// `virConnectDomainEventRegisterAny` for every domain; the callback
    /// id.
    ///
    /// # Safety
    /// `callback` must have the signature libvirt documents for
    /// `event_id`, and `free` must release `opaque` (libvirt calls it once,
    /// when the callback is deregistered or the connection freed).
    pub unsafe fn domain_event_register_any(
        &self,
        event_id: c_int,
        callback: GenericCallback,
        opaque: *mut c_void,
        free: FreeCallback,
    ) -> Result<c_int, Error> {
        // SAFETY: as the caller promises.
        check(unsafe {
            (loaded().virConnectDomainEventRegisterAny)(
                self.as_ptr(),
                ptr::null_mut(),
                event_id,
                Some(callback),
                opaque,
                Some(free),
            )
        })
    }

    /// Best effort: a connection that closed frees its callbacks anyway.
    pub fn domain_event_deregister_any(&self, callback_id: c_int) {
        // SAFETY: a live connection; an unknown id is an error, not UB.
        unsafe { (loaded().virConnectDomainEventDeregisterAny)(self.as_ptr(), callback_id) };
    }

    /// # Safety
    /// As [`Connect::domain_event_register_any`], for the close callback.
    pub unsafe fn register_close_callback(
        &self,
        callback: CloseCallback,
        opaque: *mut c_void,
        free: FreeCallback,
    ) -> Result<(), Error> {
        // SAFETY: as the caller promises.
        check(unsafe {
            (loaded().virConnectRegisterCloseCallback)(
                self.as_ptr(),
                Some(callback),
                opaque,
                Some(free),
            )
        })
        .map(|_| ())
    }

    /// Best effort, as [`Connect::domain_event_deregister_any`].
    pub fn unregister_close_callback(&self, callback: CloseCallback) {
        // SAFETY: a live connection.
        unsafe { (loaded().virConnectUnregisterCloseCallback)(self.as_ptr(), Some(callback)) };
    }

    /// Closes the connection (dropping it does the same).
    pub fn close(self) {}

    /// Starts a transient domain.
    #[cfg(test)]
    pub fn create_xml(&self, xml: &str) -> Result<Domain, Error> {
        let xml = c_string(xml)?;
        // SAFETY: a live connection, a NUL-terminated string.
        let ptr = unsafe { (loaded().virDomainCreateXML)(self.as_ptr(), xml.as_ptr(), 0) };
        NonNull::new(ptr)
            .map(|ptr| Domain { ptr })
            .ok_or_else(Error::last)
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        // SAFETY: our reference, released once.
        unsafe { (loaded().virConnectClose)(self.as_ptr()) };
    }
}

/// A domain reference (freed on drop).
pub struct Domain {
    ptr: NonNull<c_void>,
}

// SAFETY: as for Connect.
unsafe impl Send for Domain {}

impl Domain {
    fn as_ptr(&self) -> DomainPtr {
        self.ptr.as_ptr()
    }

    pub fn uuid(&self) -> Result<Uuid, Error> {
        let mut bytes = [0 as c_uchar; UUID_BUFLEN];
        // SAFETY: a live domain; bytes has VIR_UUID_BUFLEN bytes.
        check(unsafe { (loaded().virDomainGetUUID)(self.as_ptr(), bytes.as_mut_ptr()) })?;
        Ok(Uuid::from_bytes(bytes))
    }

    /// `virDomainGetXMLDesc`: the live XML.
    pub fn xml_desc(&self, flags: u32) -> Result<String, Error> {
        // SAFETY: a live domain; the string is ours, allocated with malloc.
        unsafe {
            let xml = (loaded().virDomainGetXMLDesc)(self.as_ptr(), flags);
            if xml.is_null() {
                return Err(Error::last());
            }
            let text = CStr::from_ptr(xml).to_string_lossy().into_owned();
            libc::free(xml.cast());
            Ok(text)
        }
    }

    pub fn is_active(&self) -> Result<bool, Error> {
        // SAFETY: a live domain.
        check(unsafe { (loaded().virDomainIsActive)(self.as_ptr()) }).map(|active| active == 1)
    }

    pub fn name(&self) -> Result<String, Error> {
        // SAFETY: a live domain; the name belongs to it (not freed here).
        unsafe {
            let name = (loaded().virDomainGetName)(self.as_ptr());
            if name.is_null() {
                return Err(Error::last());
            }
            Ok(CStr::from_ptr(name).to_string_lossy().into_owned())
        }
    }

    /// `virDomainSetMetadata` (an element, in the live domain).
    #[cfg(test)]
    pub fn set_metadata_element(&self, element: &str, key: &str, ns: &str) -> Result<(), Error> {
        let (element, key, ns) = (c_string(element)?, c_string(key)?, c_string(ns)?);
        // SAFETY: a live domain, NUL-terminated strings.
        check(unsafe {
            (loaded().virDomainSetMetadata)(
                self.as_ptr(),
                METADATA_ELEMENT,
                element.as_ptr(),
                key.as_ptr(),
                ns.as_ptr(),
                AFFECT_LIVE,
            )
        })
        .map(|_| ())
    }

    #[cfg(test)]
    pub fn destroy(&self) -> Result<(), Error> {
        // SAFETY: a live domain.
        check(unsafe { (loaded().virDomainDestroy)(self.as_ptr()) }).map(|_| ())
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        // SAFETY: our reference, released once.
        unsafe { (loaded().virDomainFree)(self.as_ptr()) };
    }
}

/// The UUID of a domain libvirt passed to a callback (no call to libvirtd).
///
/// # Safety
/// `dom` must be a domain pointer valid for the call (as it is during an
/// event callback).
pub unsafe fn callback_domain_uuid(dom: DomainPtr) -> Option<Uuid> {
    let functions = functions().ok()?;
    let mut buf = [0 as c_char; UUID_STRING_BUFLEN];
    // SAFETY: dom is valid (the caller); buf has the documented size.
    if unsafe { (functions.virDomainGetUUIDString)(dom, buf.as_mut_ptr()) } < 0 {
        return None;
    }
    // SAFETY: libvirt wrote a NUL-terminated string into buf.
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Uuid::parse_str(&text.to_string_lossy()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_named_with_its_package() {
        let Err(err) = open("libvirt-mdr-absent.so.0") else {
            panic!("a library that does not exist loaded");
        };
        assert!(
            err.starts_with(
                "cannot load libvirt's client library libvirt-mdr-absent.so.0 \
                 (Debian package libvirt0): "
            ),
            "{err}"
        );
        // dlerror's own words, not libloading's bare "dlopen failed".
        assert!(err.contains("No such file or directory"), "{err}");
    }

    #[test]
    fn a_library_without_libvirts_functions_is_refused_by_name() {
        let Err(err) = open("libc.so.6") else {
            panic!("libc passed for libvirt");
        };
        assert!(err.contains("virConnectOpen: "), "{err}");
    }
}
