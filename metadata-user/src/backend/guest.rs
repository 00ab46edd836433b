//! What ingress hands the backend and gets back: who asks, and the answer
//! with how far it may travel.
use std::{
    future::Future,
    net::IpAddr,
    ops::Range,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

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

/// A guest request's body as the backends take it: hyper's on a
/// connection hyper serves, an empty one for a plain request read without
/// it (`ingress::guest_http`).
pub trait GuestBody:
    hyper::body::Body<
        Data = Bytes,
        Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
    > + Send
    + 'static
{
}

impl<B> GuestBody for B where
    B: hyper::body::Body<
            Data = Bytes,
            Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
        > + Send
        + 'static
{
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
    /// Set when the same request head from the same guest would get this
    /// answer again for as long as the registry publishes no new snapshot
    /// (`Registry::generation`): ingress may then keep it encoded and
    /// answer a repeat of the request with it, without the backend
    /// (`ingress::answer_replay`). None for anything that depends on more:
    /// the clock (tokens, the versions listing), a store outside the
    /// registry (passwords), nova, a watch, the request rate.
    pub repeat: Option<Repeat>,
}

/// How a repeat of a request gets this reply again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repeat {
    /// The span of the body that is new in every answer (meta_data.json's
    /// random seed): filled afresh for each repeat.
    pub seed: Option<Range<usize>>,
}

impl Reply {
    /// An answer that may travel as far as any other packet.
    pub fn new(response: Response<Full<Bytes>>) -> Self {
        Self {
            response,
            ip_ttl: DEFAULT_TTL,
            repeat: None,
        }
    }
}

/// A reply now, or one that has to wait (a nova round trip, a held watch,
/// a password body still arriving). Awaited like any future; built without
/// one for what is answered at once, which is nearly every request: hyper
/// keeps a request's future in place for the whole connection and moves it
/// on every request, and an `async fn` chain from ingress down to the
/// answer would be kilobytes (each layer keeps its own copy of the request)
/// to copy per request and to allocate per connection.
pub enum Answer<'a> {
    Ready(Option<Reply>),
    Later(Pin<Box<dyn Future<Output = Reply> + Send + 'a>>),
}

impl<'a> Answer<'a> {
    pub fn ready(reply: Reply) -> Self {
        Self::Ready(Some(reply))
    }

    pub fn later(reply: impl Future<Output = Reply> + Send + 'a) -> Self {
        Self::Later(Box::pin(reply))
    }

    /// The same answer with `then` applied once it is there.
    pub fn map(self, then: impl FnOnce(Reply) -> Reply + Send + 'a) -> Self {
        match self {
            Self::Ready(reply) => Self::Ready(reply.map(then)),
            Self::Later(reply) => Self::later(async move { then(reply.await) }),
        }
    }
}

impl Future for Answer<'_> {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        match self.get_mut() {
            Self::Ready(reply) => Poll::Ready(reply.take().expect("an answer is awaited once")),
            Self::Later(reply) => reply.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn reply(text: &'static str) -> Reply {
        Reply::new(Response::new(Full::new(Bytes::from_static(
            text.as_bytes(),
        ))))
    }

    fn ttl(ttl: u8) -> impl FnOnce(Reply) -> Reply + Send {
        move |mut reply| {
            reply.ip_ttl = ttl;
            reply
        }
    }

    #[tokio::test]
    async fn ready_and_later_answers_are_awaited_and_mapped_alike() {
        let now = Answer::ready(reply("now")).map(ttl(1)).await;
        assert_eq!(now.ip_ttl, 1);
        let later = Answer::later(async {
            tokio::task::yield_now().await;
            reply("later")
        })
        .map(ttl(2))
        .await;
        assert_eq!(later.ip_ttl, 2);
        let body = later.response.into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), "later");
    }

    /// The point of `Answer`: what is answered at once is no bigger than
    /// the reply itself plus a tag, whatever the backends' futures weigh.
    #[test]
    fn an_answer_is_small() {
        assert!(
            std::mem::size_of::<Answer<'static>>() <= std::mem::size_of::<Reply>() + 16,
            "{} bytes",
            std::mem::size_of::<Answer<'static>>()
        );
    }
}
