//! Would the host firewall drop what guests send the server? Their requests
//! arrive on the server end (`mdr-srv`) as TCP to the server address and
//! port, and go through the INPUT chain like any local delivery.
//!
//! The filter table is read with `iptables-save` (which shows the legacy and
//! the nftables-backed iptables alike) and the INPUT chain is walked for
//! such a packet: rules that surely match it decide (ACCEPT, DROP, REJECT,
//! a jump), rules with a match this check does not understand are skipped
//! and make the answer a warning rather than a certainty. Native nftables
//! input chains are only reported.
use std::{collections::HashMap, net::Ipv4Addr, process::Command};

use super::Item;
use crate::cli::settings::Settings;

const NAME: &str = "firewall";

/// The packet every guest request starts with.
#[derive(Clone, Debug)]
pub struct Packet<'a> {
    pub in_ifname: &'a str,
    pub dst: Ipv4Addr,
    pub dport: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

/// The walk's answer, and whether a rule it could not read was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walk {
    pub verdict: Verdict,
    /// The rule (or policy) that decided, as iptables-save prints it.
    pub decided_by: String,
    pub skipped_unknown: bool,
}

/// The filter table of an `iptables-save` dump: chain policies and rules.
#[derive(Debug, Default)]
pub struct FilterTable {
    policies: HashMap<String, String>,
    rules: HashMap<String, Vec<String>>,
}

impl FilterTable {
    pub fn parse(dump: &str) -> Self {
        let mut table = Self::default();
        let mut in_filter = false;
        for line in dump.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('*') {
                in_filter = name == "filter";
            } else if !in_filter {
                continue;
            } else if let Some(chain) = line.strip_prefix(':') {
                let mut parts = chain.split_whitespace();
                if let (Some(name), Some(policy)) = (parts.next(), parts.next()) {
                    table.policies.insert(name.into(), policy.into());
                }
            } else if let Some((chain, spec)) = line
                .strip_prefix("-A ")
                .and_then(|rule| rule.split_once(' '))
            {
                table
                    .rules
                    .entry(chain.into())
                    .or_default()
                    .push(spec.into());
            }
        }
        table
    }

    /// Walks INPUT for `packet`.
    pub fn walk(&self, packet: &Packet) -> Walk {
        let mut skipped = false;
        match self.walk_chain("INPUT", packet, &mut skipped, 0) {
            Some((verdict, decided_by)) => Walk {
                verdict,
                decided_by,
                skipped_unknown: skipped,
            },
            None => {
                let policy = self.policies.get("INPUT").map_or("ACCEPT", String::as_str);
                Walk {
                    verdict: if policy == "ACCEPT" {
                        Verdict::Accept
                    } else {
                        Verdict::Drop
                    },
                    decided_by: format!("the INPUT policy {policy}"),
                    skipped_unknown: skipped,
                }
            }
        }
    }

    /// A verdict, or None to go on after this chain (RETURN or its end).
    fn walk_chain(
        &self,
        chain: &str,
        packet: &Packet,
        skipped: &mut bool,
        depth: usize,
    ) -> Option<(Verdict, String)> {
        if depth > 16 {
            *skipped = true;
            return None;
        }
        for rule in self.rules.get(chain).into_iter().flatten() {
            match rule_matches(rule, packet) {
                Match::No => continue,
                Match::Unknown => {
                    *skipped = true;
                    continue;
                }
                Match::Yes => {}
            }
            let Some(target) = option_value(rule, &["-j", "--jump", "-g", "--goto"]) else {
                continue; // a counting rule
            };
            let decided_by = format!("`-A {chain} {rule}`");
            match target {
                "ACCEPT" => return Some((Verdict::Accept, decided_by)),
                "DROP" | "REJECT" => return Some((Verdict::Drop, decided_by)),
                "RETURN" => return None,
                "LOG" | "NFLOG" | "MARK" | "CONNMARK" => continue,
                user_chain if self.rules.contains_key(user_chain) => {
                    if let Some(verdict) = self.walk_chain(user_chain, packet, skipped, depth + 1) {
                        return Some(verdict);
                    }
                }
                _ => *skipped = true,
            }
        }
        None
    }
}

enum Match {
    Yes,
    No,
    Unknown,
}

fn option_value<'a>(rule: &'a str, names: &[&str]) -> Option<&'a str> {
    let mut words = rule.split_whitespace();
    while let Some(word) = words.next() {
        if names.contains(&word) {
            return words.next();
        }
    }
    None
}

/// Whether `rule` surely matches, surely does not, or uses a match this
/// check cannot evaluate.
fn rule_matches(rule: &str, packet: &Packet) -> Match {
    let words: Vec<&str> = rule.split_whitespace().collect();
    let mut i = 0;
    let mut unknown = false;
    while i < words.len() {
        let (negated, word) = match words[i] {
            "!" => {
                i += 1;
                (true, words.get(i).copied().unwrap_or_default())
            }
            word => (false, word),
        };
        let value = words.get(i + 1).copied().unwrap_or_default();
        let holds = match word {
            "-i" | "--in-interface" => Some(interface_matches(value, packet.in_ifname)),
            "-p" | "--protocol" => Some(value == "tcp" || value == "6" || value == "all"),
            "-d" | "--destination" => Some(cidr_contains(value, packet.dst)),
            "--dport" | "--destination-port" => Some(port_matches(value, packet.dport)),
            "--state" | "--ctstate" => Some(value.split(',').any(|s| s == "NEW")),
            "-m" | "--match" if matches!(value, "tcp" | "state" | "conntrack" | "comment") => None,
            "--comment" | "-j" | "--jump" | "-g" | "--goto" | "--reject-with" => None,
            "-c" => {
                i += 3;
                continue;
            }
            _ if word.starts_with('-') => {
                unknown = true;
                None
            }
            _ => {
                i += 1;
                continue;
            }
        };
        if let Some(holds) = holds
            && holds == negated
        {
            return Match::No;
        }
        i += 2;
    }
    if unknown { Match::Unknown } else { Match::Yes }
}

fn interface_matches(pattern: &str, ifname: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => ifname.starts_with(prefix),
        None => pattern == ifname,
    }
}

fn cidr_contains(cidr: &str, addr: Ipv4Addr) -> bool {
    let (net, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let (Ok(net), Ok(len)) = (net.parse::<Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
    u32::from(net) & mask == u32::from(addr) & mask
}

fn port_matches(spec: &str, port: u16) -> bool {
    match spec.split_once(':') {
        Some((low, high)) => {
            let low = low.parse().unwrap_or(0);
            let high = high.parse().unwrap_or(u16::MAX);
            (low..=high).contains(&port)
        }
        None => spec.parse() == Ok(port),
    }
}

fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn item(settings: &Settings) -> Item {
    let packet = Packet {
        in_ifname: &settings.link.server_ifname,
        dst: settings.identity.server_addr,
        dport: settings.server_port,
    };
    let what = format!(
        "TCP to {}:{} in on {}",
        packet.dst, packet.dport, packet.in_ifname
    );
    let nft_note = nft_input_chains(packet.in_ifname);
    let Some(dump) = run("iptables-save", &["-t", "filter"]) else {
        return match nft_note {
            Some(note) => Item::warn(NAME, format!("no iptables-save; {note}")),
            None => Item::ok(NAME, "no iptables or nftables rules found"),
        };
    };
    let walk = FilterTable::parse(&dump).walk(&packet);
    let suffix = nft_note.map(|note| format!("; {note}")).unwrap_or_default();
    match (walk.verdict, walk.skipped_unknown) {
        (Verdict::Accept, false) => Item::ok(
            NAME,
            format!("iptables accepts {what} ({}){suffix}", walk.decided_by),
        ),
        (Verdict::Accept, true) => Item::warn(
            NAME,
            format!(
                "iptables seems to accept {what} ({}), but rules with matches this check does \
                 not read were skipped{suffix}",
                walk.decided_by
            ),
        ),
        (Verdict::Drop, _) => Item::fail(
            NAME,
            format!("iptables drops {what} ({})", walk.decided_by),
            format!(
                "iptables -I INPUT -i {} -p tcp -d {} --dport {} -j ACCEPT",
                packet.in_ifname, packet.dst, packet.dport
            ),
        ),
    }
}

/// Native nftables chains on the input hook with a drop policy, which this
/// check does not evaluate (iptables-nft's own tables are read above).
fn nft_input_chains(server_ifname: &str) -> Option<String> {
    let ruleset = run("nft", &["list", "ruleset"])?;
    let mut table = "";
    let mut found = Vec::new();
    for line in ruleset.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("table ") {
            table = name.trim_end_matches(" {");
        } else if line.contains("hook input") && line.contains("policy drop") {
            found.push(table.to_owned());
        }
    }
    (!found.is_empty()).then(|| {
        format!(
            "nftables input chains with policy drop in {}: make sure they accept iifname \
             \"{server_ifname}\"",
            found.join(", "),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: Packet = Packet {
        in_ifname: "mdr-srv",
        dst: Ipv4Addr::new(240, 0, 0, 1),
        dport: 80,
    };

    fn walk(dump: &str) -> Walk {
        FilterTable::parse(dump).walk(&PACKET)
    }

    #[test]
    fn walks_input_like_the_kernel_for_the_server_packet() {
        let open = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(walk(open).verdict, Verdict::Accept);

        let closed = "*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n\
                      -A INPUT -p tcp -m tcp --dport 22 -j ACCEPT\nCOMMIT\n";
        let result = walk(closed);
        assert_eq!(result.verdict, Verdict::Drop);
        assert!(result.decided_by.contains("policy DROP"));

        let opened = "*filter\n:INPUT DROP [0:0]\n:MDR - [0:0]\n-A INPUT -j MDR\n\
                      -A MDR -i mdr+ -p tcp -d 240.0.0.1/32 --dport 80 -j ACCEPT\nCOMMIT\n";
        assert_eq!(walk(opened).verdict, Verdict::Accept);

        let rejected = "*filter\n:INPUT ACCEPT [0:0]\n\
                        -A INPUT -d 240.0.0.0/4 -j REJECT --reject-with icmp-port-unreachable\n\
                        COMMIT\n";
        assert_eq!(walk(rejected).verdict, Verdict::Drop);

        let negated = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT ! -i mdr-srv -j DROP\nCOMMIT\n";
        assert_eq!(walk(negated).verdict, Verdict::Accept);

        let unknown = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m set --match-set x src -j DROP\n\
                       COMMIT\n";
        let result = walk(unknown);
        assert_eq!(result.verdict, Verdict::Accept);
        assert!(result.skipped_unknown);

        let other_table = "*nat\n:INPUT DROP [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(walk(other_table).verdict, Verdict::Accept);
    }
}
