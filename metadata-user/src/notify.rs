//! systemd's readiness protocol (`Type=notify`): one datagram to the socket
//! named by NOTIFY_SOCKET. Without that variable (not started by systemd)
//! nothing is sent. A send that fails is logged, not fatal: the daemon
//! serves either way, and systemd reports the missing READY=1 itself.
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::warn;

const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// READY=1: the datapath is loaded and the guest listener is up.
pub fn ready(status: &str) {
    send(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}\n",
        std::process::id()
    ));
}

/// STOPPING=1: shutting down (systemd then waits for the exit).
pub fn stopping() {
    send("STOPPING=1\n");
}

fn send(message: &str) {
    let Some(path) = std::env::var_os(NOTIFY_SOCKET) else {
        return;
    };
    let result = (|| {
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            // A leading '@' names a socket in the abstract namespace.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt as _;
                SocketAddr::from_abstract_name(name)?
            }
            None => SocketAddr::from_pathname(&path)?,
        };
        UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)
    })();
    if let Err(err) = result {
        warn!(socket = ?path, "telling systemd {:?}: {err}", message.lines().next());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        // SAFETY: no other thread of this test binary reads NOTIFY_SOCKET.
        unsafe { std::env::set_var(NOTIFY_SOCKET, &path) };
        ready("serving");
        unsafe { std::env::remove_var(NOTIFY_SOCKET) };
        let mut buf = [0; 256];
        let len = socket.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            text.starts_with("READY=1\nSTATUS=serving\nMAINPID="),
            "{text}"
        );
    }
}
