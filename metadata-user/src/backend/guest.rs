//! What ingress hands the backend and gets back: who asks, and the answer
//! with how far it may travel.
use std::{net::IpAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

use crate::state::Port;

/// The guest behind a request, as ingress identified it: from the
/// datapath's flow map or the neutron proxy's headers, never from anything
/// the guest said about itself.
#[derive(Clone, Debug)]
pub struct Guest {
    pub port: Arc<Port>,
    /// The guest's own source address, as it sent it, of the family it
    /// asked over: for X-Forwarded-For in nova mode, and EC2's `local-ipv4`
    /// of a port registered without addresses. None when no answer could
    /// need it, so the datapath was not asked (see
    /// [`crate::backend::Responder::needs_guest_addr`]).
    pub guest_addr: Option<IpAddr>,
}

/// Linux's default IP TTL: how far an ordinary answer may travel.
pub const DEFAULT_TTL: u8 = 64;

/// An answer, and the IP TTL it must leave the host with. An IMDSv2 token
/// leaves with the instance's hop limit, so that it dies one router away
/// from the guest as on AWS; ingress applies it to the connection.
#[derive(Debug)]
pub struct Reply {
    pub response: Response<Full<Bytes>>,
    pub ip_ttl: u8,
}

impl Reply {
    /// An answer that may travel as far as any other packet.
    pub fn new(response: Response<Full<Bytes>>) -> Self {
        Self {
            response,
            ip_ttl: DEFAULT_TTL,
        }
    }
}
