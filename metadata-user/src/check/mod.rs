//! `metadata-redirector check`: what the daemon needs from this host, one
//! line per item, `ok` or what is wrong and how to fix it. Exits non-zero
//! when something needed is missing; `warn` lines do not count.
//!
//! It reads the same flags and `--config` file as `serve`, so it checks the
//! paths, names and ranges that daemon would use. `serve` itself runs the
//! kernel item first and refuses to start with the same message.
//!
//! The network items (routes, rp_filter, firewall) look where the server's
//! veth end lives: see [`namespace`].
pub mod caps;
pub mod files;
pub mod firewall;
pub mod kernel;
pub mod libvirt;
pub mod namespace;
pub mod routes;

use std::process::ExitCode;

use crate::cli::settings::Settings;

/// How one item came out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    /// Works, but the operator should know.
    Warn(String),
    /// Something needed is missing: what, and the fix.
    Fail {
        problem: String,
        fix: String,
    },
}

#[derive(Clone, Debug)]
pub struct Item {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl Item {
    pub fn ok(name: &'static str, what: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Ok(what.into()),
        }
    }

    pub fn warn(name: &'static str, what: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Warn(what.into()),
        }
    }

    pub fn fail(name: &'static str, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Fail {
                problem: problem.into(),
                fix: fix.into(),
            },
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }

    /// The one line `check` prints.
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::Ok(what) => format!("ok    {}: {what}", self.name),
            Outcome::Warn(what) => format!("warn  {}: {what}", self.name),
            Outcome::Fail { problem, fix } => {
                format!("FAIL  {}: {problem}; fix: {fix}", self.name)
            }
        }
    }
}

/// Every item, in the order a daemon meets them.
pub async fn items(settings: &Settings) -> Vec<Item> {
    let mut items = kernel::items(settings.tap_attach);
    items.push(files::bpffs(&settings.bpffs));
    items.push(caps::item(settings.server_port));
    items.extend(namespace::network_items(settings).await);
    items.push(files::admin_socket_dir(&settings.admin_socket));
    items.push(files::state_dir(&settings.state_dir));
    if settings.discover.is_some() {
        items.push(libvirt::item());
    }
    items
}

/// `check`: prints every item; exit 1 when one failed.
pub fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let items = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(items(&settings));
    for item in &items {
        println!("{}", item.line());
    }
    let failed = items.iter().filter(|item| item.is_failure()).count();
    if failed == 0 {
        println!("all needed items are in place");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{failed} needed item(s) missing");
        Ok(ExitCode::FAILURE)
    }
}
