//! The daemon's log on stderr: `--log-format text` for people, `json` (one
//! object per line, the event's fields at the top level) for log shippers.
//!
//! The level comes from RUST_LOG (default `info`). Audit records (target
//! `audit`, see `ingress::audit`) are kept whatever RUST_LOG says, unless it
//! names the `audit` target itself: an operator turning the log down must
//! not lose the record of who read a secret.
use tracing_subscriber::EnvFilter;

use crate::{cli::LogFormat, ingress::audit};

/// The default filter. The netlink crates warn, with a whole message dump,
/// about every link event that arrives while a request handle shuts down
/// (e.g. our own veth pair going away on exit).
const DEFAULT_FILTER: &str = "info,netlink_packet_route=error,netlink_proto=error";

pub fn init(format: LogFormat) {
    let from_env = std::env::var("RUST_LOG").ok();
    let mut filter = from_env
        .as_deref()
        .and_then(|text| EnvFilter::try_new(text).ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    if !from_env.is_some_and(|text| text.contains(audit::TARGET)) {
        filter = filter.add_directive(
            format!("{}=info", audit::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}
