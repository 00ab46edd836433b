//! Asks the daemon, over its admin socket, whether a tap is attached: the
//! signal the discovery phase times attaching by (the density phase uses
//! `port add --wait` instead: this listing grows with every tap). It is the same for both
//! `--tap-attach` modes (the daemon lists a tap under
//! `datapath.attached_taps` only once its attach, including removing the
//! other mode's leftovers, succeeded), and cheap to poll: one keep-alive
//! connection and a hand-written `GET /v1/status?taps=true`, not a CLI process per poll.
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const REQUEST: &[u8] = b"GET /v1/status?taps=true HTTP/1.1\r\nHost: localhost\r\n\r\n";

pub struct StatusPoller {
    reader: BufReader<UnixStream>,
    body: Vec<u8>,
}

impl StatusPoller {
    pub fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            reader: BufReader::new(stream),
            body: Vec::new(),
        })
    }

    /// One `GET /v1/status`; the body (JSON) stays in `self.body`.
    fn fetch(&mut self) -> Result<()> {
        self.reader.get_mut().write_all(REQUEST)?;
        self.read_answer("GET /v1/status")
    }

    /// `POST /v1/ports?wait=10` with `body` (a `PortAddRequest`) on the
    /// same keep-alive connection: the admin API's own round trip to an
    /// attached tap, without the CLI's process start. The answer.
    pub fn add_port_and_wait(&mut self, body: &[u8]) -> Result<serde_json::Value> {
        let head = format!(
            "POST /v1/ports?wait=10 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        self.read_answer("POST /v1/ports")?;
        serde_json::from_slice(&self.body).context("POST /v1/ports answered no JSON")
    }

    /// `PUT /v1/instances` with `body` (an instance document) on the same
    /// keep-alive connection: `instance put` without the CLI's process start.
    pub fn put_instance(&mut self, body: &[u8]) -> Result<()> {
        let head = format!(
            "PUT /v1/instances HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        self.read_answer("PUT /v1/instances")
    }

    /// `DELETE /v1/ports/{ifname}` on the same keep-alive connection (the
    /// bench's tap names need no percent-encoding). The daemon answers once
    /// the port is out of its registry; the tap's detach follows.
    pub fn delete_port(&mut self, ifname: &str) -> Result<()> {
        let head = format!("DELETE /v1/ports/{ifname} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.reader.get_mut().write_all(head.as_bytes())?;
        self.read_answer("DELETE /v1/ports")
    }

    /// Reads one 200 answer; its body stays in `self.body`.
    fn read_answer(&mut self, what: &str) -> Result<()> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("{what} answered {:?}", line.trim_end());
        }
        let mut length = None;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the admin socket closed mid-answer");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let length = length.with_context(|| format!("{what}: no Content-Length"))?;
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body)?;
        Ok(())
    }

    /// Whether `tap` is among the attached taps now. Tap names are unique
    /// random names and appear nowhere else in the status, so a substring
    /// test does (parsing the whole JSON, which grows with every tap, would
    /// take CPU from the daemon being measured on a two-core machine).
    pub fn is_attached(&mut self, tap: &str) -> Result<bool> {
        self.fetch()?;
        let key = format!("\"{tap}\":{{");
        Ok(self
            .body
            .windows(key.len())
            .any(|window| window == key.as_bytes()))
    }

    /// Polls until `tap` is attached; when it was first seen.
    pub fn wait_attached(&mut self, tap: &str, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_attached(tap)? {
                return Ok(Instant::now());
            }
            if Instant::now() >= deadline {
                bail!("{tap} was not attached within {timeout:?}");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// Between polls: fine enough against attach times of 1-20 ms, coarse enough
/// that the daemon does not spend a core building status answers.
const POLL_INTERVAL: Duration = Duration::from_micros(250);
