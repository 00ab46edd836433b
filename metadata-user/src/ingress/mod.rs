//! Who is asking: the two ways a guest's request comes in, and what one
//! guest may take before it is answered.
//!
//! - `server`: the TCP server behind the datapath, a thread per core; the
//!   identity address says which port a connection came through, the flow
//!   map the guest's own address when needed (`FlowLookup`, implemented in
//!   serve.rs).
//! - `neutron_agent`: neutron-metadata-agent's unix socket, for the haproxy
//!   proxies in router and DHCP namespaces; their headers say which port.
//! - `handed_over`: listeners held across restarts by someone else
//!   (systemd socket activation), so a restart refuses no guest.
//! - `forwarded_addr`: the guest address a neutron proxy reports, IPv4 or
//!   IPv6 (a link-local one names the guest's MAC).
//! - `guest_http`: a guest connection's plain HTTP/1.1 requests, read
//!   and answered without hyper; anything else is handed to hyper.
//! - `answer_replay`: a request head a guest sent before, answered again
//!   with the bytes its answer went out as, while the registry is
//!   unchanged.
//! - `guest_socket`: a guest connection's socket, accepted and served
//!   without epoll until it has to wait.
//! - `conn`: what an answer sets on its connection (the IMDSv2 hop limit as
//!   IP TTL, the FIN with the last answer).
//! - `header_deadline`: how long a guest connection may take to send a
//!   request head, one ticker per server thread instead of a timer per
//!   request.
//! - `limits`, `ratelimit`: a per-port cap on open connections and on the
//!   request rate, so one guest never crowds out the others.
//! - `dispatch`: the rate limit, then the backend; then the metrics and,
//!   for a guest's secrets, the audit log (`audit`).
//!
//! Depends on `backend` (who answers) and `state` (which port a slot is);
//! records into `metrics`.
mod answer_replay;
pub mod audit;
pub mod conn;
pub mod dispatch;
pub mod forwarded_addr;
mod guest_http;
mod guest_socket;
pub mod handed_over;
pub mod header_deadline;
pub mod limits;
pub mod neutron_agent;
pub mod ratelimit;
pub mod server;
