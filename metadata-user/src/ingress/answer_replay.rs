//! A request head a guest has sent before, answered again with the bytes
//! its answer went out as, without the backend.
//!
//! Guests repeat themselves: an agent polls the same path, and a client
//! that opens a connection per request sends the same head on each. What the local store answers from the instance
//! document and the port alone (`Reply::repeat`) is kept here as it was
//! encoded, under the exact bytes of the request head, the port and the
//! guest's address, with the registry's generation it was answered under:
//! any snapshot published since (`instance put`, `port add`, discovery)
//! makes every kept answer stale at once. Writes are rare, reads constant.
//!
//! A repeat costs finding the head's end, a hash lookup and a comparison
//! of the head's bytes, the rate and the metrics `Dispatcher::replay`
//! keeps as the full path would, a new seed where the answer has one, and
//! the Date; not parsing the head into `http` types, routing, the
//! response and its encoding (docs/benchmark.md has the instruction
//! counts). What is never kept: anything that depends on the clock (a
//! request with a token, the versions listing), the password, the signed
//! identity, a watch, nova's answers, errors, and every request the audit
//! log records (user data): those go the whole way each time.
//!
//! The same bytes need no second parse: a head is kept only when it ends
//! at its first blank line spelled CRLF CRLF ([`head_end`]), and a
//! repeat is looked up by the bytes up to that same first CRLF CRLF, so
//! what matches is a byte-for-byte copy of a head that was parsed as a
//! plain request, followed by whatever comes after it.
//!
//! Per server thread (a connection is served start to end on one): no
//! lock, nothing shared. At most [`MAX_KEPT`] answers per thread; the one
//! after that starts the table afresh. A guest that sends ever new heads
//! can push other guests' answers out that way, which leaves their
//! requests as fast as without this table, never answered wrongly.
use std::{
    cell::RefCell,
    hash::BuildHasher as _,
    net::IpAddr,
    ops::Range,
    sync::{Arc, LazyLock, Weak},
};

use bytes::Bytes;
use memchr::memmem;

use super::guest_http::{HTTP_DATE_LEN, http_date};
use crate::{backend::Guest, metrics::Tree, state::Port};

/// Kept answers per server thread: a host's guests polling a few paths
/// each, or one boot's crawl. An entry is its request head, its answer's
/// head, and its body (shared with the answer cache's render where the
/// body has no seed): about 1-4 KiB.
const MAX_KEPT: usize = 256;

/// Where a request head ends: just past its first CRLF CRLF, if that lies
/// within `max_head` bytes.
pub(super) fn head_end(buffer: &[u8], max_head: usize) -> Option<usize> {
    // Built once: a searcher per call costs more than the search.
    static BLANK_LINE: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));
    let searched = &buffer[..buffer.len().min(max_head)];
    BLANK_LINE.find(searched).map(|at| at + 4)
}

/// An answer to send again: its body and what goes with it (the head
/// is kept apart, to get the current Date).
#[derive(Clone)]
pub(super) struct Replay {
    pub body: Bytes,
    /// The span of `body` to fill with a new seed.
    pub seed: Option<Range<usize>>,
    pub ip_ttl: u8,
    pub tree: Tree,
    pub status: u16,
    /// The connection ends after it (the request or the answer said so).
    pub closes: bool,
}

/// What is kept of one answer.
struct Kept {
    /// Held weakly, compared by address: a port replaced by `port add`
    /// is a new allocation, and this one's address cannot be reused while
    /// the weak reference holds it.
    port: Weak<Port>,
    guest_addr: Option<IpAddr>,
    request: Box<[u8]>,
    generation: u64,
    /// The answer's head, with the Date of its first sending at `date_at`.
    head: Box<[u8]>,
    date_at: usize,
    replay: Replay,
}

impl Kept {
    fn answers(&self, guest: &Guest, request: &[u8]) -> bool {
        std::ptr::eq(self.port.as_ptr(), Arc::as_ptr(&guest.port))
            && self.guest_addr == guest.guest_addr
            && *self.request == *request
    }
}

#[derive(Default)]
struct KeptAnswers {
    /// Keyed by a hash of (port, guest address, request head), with a
    /// random seed per thread; an entry is checked against all three
    /// before it is used, and a colliding one simply replaces it.
    by_hash: foldhash::HashMap<u64, Kept>,
    hasher: foldhash::fast::RandomState,
}

impl KeptAnswers {
    fn hash(&self, guest: &Guest, request: &[u8]) -> u64 {
        self.hasher
            .hash_one((Arc::as_ptr(&guest.port), guest.guest_addr, request))
    }
}

thread_local! {
    static KEPT: RefCell<KeptAnswers> = RefCell::default();
}

/// The answer kept for `request` (a whole head, as [`head_end`] found it)
/// from `guest`, if it was answered under `generation` (the registry's
/// now). Its head goes into `head` with the current Date.
pub(super) fn lookup(
    guest: &Guest,
    request: &[u8],
    generation: u64,
    head: &mut Vec<u8>,
) -> Option<Replay> {
    KEPT.with_borrow(|kept| {
        let entry = kept.by_hash.get(&kept.hash(guest, request))?;
        if entry.generation != generation || !entry.answers(guest, request) {
            return None;
        }
        #[cfg(test)]
        REPLAYED.set(REPLAYED.get() + 1);
        head.clear();
        head.extend_from_slice(&entry.head);
        http_date(|date| {
            head[entry.date_at..entry.date_at + HTTP_DATE_LEN].copy_from_slice(date);
        });
        Some(entry.replay.clone())
    })
}

/// An answer as it went out, to be sent again for the same request.
pub(super) struct Answered<'a> {
    /// The request head, as [`head_end`] delimits it.
    pub request: &'a [u8],
    /// The registry's generation read before the request was answered.
    pub generation: u64,
    pub head: &'a [u8],
    /// Where the Date's value is in `head`.
    pub date_at: usize,
    pub replay: Replay,
}

/// Keeps `answered` for repeats of its request from `guest`, when its
/// head is delimited as a repeat's would be (see the module's note) and
/// its seed, if it has one, lies within the body.
pub(super) fn keep(guest: &Guest, answered: Answered<'_>) {
    if head_end(answered.request, usize::MAX) != Some(answered.request.len())
        || answered.date_at + HTTP_DATE_LEN > answered.head.len()
    {
        return;
    }
    if let Some(seed) = &answered.replay.seed
        && (seed.end > answered.replay.body.len()
            || seed.len() != crate::backend::local::SEED_BASE64_LEN)
    {
        return;
    }
    KEPT.with_borrow_mut(|kept| {
        if kept.by_hash.len() >= MAX_KEPT {
            kept.by_hash.clear();
        }
        let hash = kept.hash(guest, answered.request);
        kept.by_hash.insert(
            hash,
            Kept {
                port: Arc::downgrade(&guest.port),
                guest_addr: guest.guest_addr,
                request: answered.request.into(),
                generation: answered.generation,
                head: answered.head.into(),
                date_at: answered.date_at,
                replay: answered.replay,
            },
        );
    });
}

#[cfg(test)]
thread_local! {
    static REPLAYED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// What this thread keeps, and how many answers it found kept (tests: a
/// current-thread runtime serves on the test's own thread).
#[cfg(test)]
pub(super) fn kept_and_replayed() -> (usize, usize) {
    (KEPT.with_borrow(|kept| kept.by_hash.len()), REPLAYED.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Source, port::PortSpec};

    fn guest(slot: u32, guest_addr: Option<IpAddr>) -> Guest {
        Guest {
            port: Arc::new(Port {
                spec: PortSpec {
                    ifname: format!("tap-{slot}"),
                    instance: uuid::Uuid::from_u128(slot.into()),
                    port_id: None,
                    mac: None,
                    ips: Vec::new(),
                    network_id: None,
                    project_id: None,
                },
                slot,
                source: Source::Manual,
            }),
            guest_addr,
        }
    }

    const REQUEST: &[u8] = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n";
    const ANSWER_HEAD: &[u8] =
        b"HTTP/1.1 200 OK\r\ndate: Thu, 01 Jan 1970 00:00:00 GMT\r\ncontent-length: 12\r\n\r\n";

    fn keep_answer(guest: &Guest, request: &[u8], generation: u64, body: &Bytes) {
        keep(
            guest,
            Answered {
                request,
                generation,
                head: ANSWER_HEAD,
                date_at: "HTTP/1.1 200 OK\r\ndate: ".len(),
                replay: Replay {
                    body: body.clone(),
                    seed: None,
                    ip_ttl: 64,
                    tree: Tree::Ec2,
                    status: 200,
                    closes: false,
                },
            },
        );
    }

    fn lookup_body(guest: &Guest, request: &[u8], generation: u64) -> Option<Bytes> {
        let mut head = Vec::new();
        let replay = lookup(guest, request, generation, &mut head)?;
        assert!(head.starts_with(b"HTTP/1.1 200 OK\r\ndate: "));
        let date = &head[23..23 + HTTP_DATE_LEN];
        assert!(httpdate::parse_http_date(std::str::from_utf8(date).unwrap()).is_ok());
        assert_ne!(
            date, b"Thu, 01 Jan 1970 00:00:00 GMT",
            "the date is today's"
        );
        Some(replay.body)
    }

    #[test]
    fn a_head_ends_at_its_first_crlf_crlf() {
        assert_eq!(head_end(REQUEST, 8192), Some(REQUEST.len()));
        let mut two = REQUEST.to_vec();
        two.extend_from_slice(REQUEST);
        assert_eq!(head_end(&two, 8192), Some(REQUEST.len()));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 8192), None);
        // Bare line feeds end a head for httparse, not here: such a head
        // is never kept, and never looked up.
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\n", 8192), None);
        assert_eq!(head_end(b"\r\n\r\n", 8192), Some(4));
        assert_eq!(head_end(b"\n\r\n", 8192), None);
        assert_eq!(
            head_end(REQUEST, REQUEST.len() - 1),
            None,
            "beyond the limit"
        );
    }

    #[test]
    fn a_kept_answer_is_for_the_same_bytes_port_address_and_generation() {
        let a = guest(1, None);
        let body = Bytes::from_static(b"instance-id\n");
        keep_answer(&a, REQUEST, 7, &body);
        assert_eq!(lookup_body(&a, REQUEST, 7), Some(body.clone()));
        assert!(
            lookup_body(&a, REQUEST, 8).is_none(),
            "the registry changed"
        );
        let mut other = REQUEST.to_vec();
        other[5] = b'X';
        assert!(lookup_body(&a, &other, 7).is_none(), "other bytes");
        // The same slot and name, but another port (re-added): not its answer.
        assert!(lookup_body(&guest(1, None), REQUEST, 7).is_none());
        let with_addr = Guest {
            guest_addr: Some("10.0.0.5".parse().unwrap()),
            ..a.clone()
        };
        assert!(
            lookup_body(&with_addr, REQUEST, 7).is_none(),
            "another address"
        );
    }

    #[test]
    fn a_head_that_a_repeat_would_delimit_otherwise_is_not_kept() {
        let a = guest(2, None);
        let body = Bytes::from_static(b"x");
        keep_answer(&a, b"GET / HTTP/1.1\nHost: x\n\n", 1, &body);
        // Ends with CRLF CRLF, but an earlier blank line ends it first.
        keep_answer(&a, b"GET / HTTP/1.1\r\n\r\nHost: x\r\n\r\n", 1, &body);
        assert_eq!(kept_and_replayed().0, 0);
    }

    #[test]
    fn a_seed_outside_the_body_is_not_kept() {
        let a = guest(3, None);
        let body = Bytes::from(vec![b'a'; 100]);
        keep(
            &a,
            Answered {
                request: REQUEST,
                generation: 1,
                head: ANSWER_HEAD,
                date_at: 23,
                replay: Replay {
                    body,
                    seed: Some(0..crate::backend::local::SEED_BASE64_LEN),
                    ip_ttl: 64,
                    tree: Tree::OpenStack,
                    status: 200,
                    closes: false,
                },
            },
        );
        assert_eq!(kept_and_replayed().0, 0);
    }

    #[test]
    fn a_thread_keeps_at_most_its_bound() {
        let body = Bytes::from_static(b"x");
        let guests: Vec<Guest> = (0..MAX_KEPT as u32 + 1)
            .map(|slot| guest(slot, None))
            .collect();
        for guest in &guests {
            keep_answer(guest, REQUEST, 1, &body);
        }
        // The last one started the table afresh.
        assert_eq!(kept_and_replayed().0, 1);
        assert!(lookup_body(&guests[MAX_KEPT], REQUEST, 1).is_some());
        assert!(lookup_body(&guests[0], REQUEST, 1).is_none());
    }
}
