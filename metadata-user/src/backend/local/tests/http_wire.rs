//! `handle` behind a real hyper HTTP/1 connection on loopback: what actually
//! goes over the wire (HEAD's Content-Length, keep-alive, the request bodies
//! hyper hands us).
use std::convert::Infallible;

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;

/// Serves one connection with `handle` for the rich instance; returns the
/// raw bytes the server sent for `raw_requests`.
async fn exchange(raw_requests: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let harness = Arc::new(Harness::new());
        let doc = Arc::new(rich_instance());
        let service = service_fn(move |request| {
            let harness = harness.clone();
            let doc = doc.clone();
            async move {
                let reply = handle(&harness.ctx, &default_guest(), Some(doc), request).await;
                Ok::<_, Infallible>(reply.response)
            }
        });
        http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
            .unwrap();
    });
    let mut client = TcpStream::connect(address).await.unwrap();
    client.write_all(raw_requests.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    client.read_to_end(&mut received).await.unwrap();
    server.await.unwrap();
    String::from_utf8(received).unwrap()
}

#[tokio::test]
async fn get_and_head_on_one_connection() {
    let wire = exchange(concat!(
        "GET /latest/meta-data/hostname HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        "HEAD /latest/meta-data/hostname HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n",
    ))
    .await;
    let responses: Vec<&str> = wire.split("HTTP/1.1 ").filter(|r| !r.is_empty()).collect();
    assert_eq!(responses.len(), 3, "{wire}");
    assert!(responses[0].starts_with("200 OK\r\n"));
    assert!(
        responses[0].contains("content-length: 16\r\n"),
        "{}",
        responses[0]
    );
    assert!(responses[0].contains("content-type: text/plain; charset=UTF-8\r\n"));
    assert!(responses[0].ends_with("\r\n\r\nweb-01.novalocal"));
    // HEAD: same length header, no body (the next response follows at once).
    assert!(
        responses[1].contains("content-length: 16\r\n"),
        "{}",
        responses[1]
    );
    assert!(responses[1].ends_with("\r\n\r\n"), "{}", responses[1]);
    assert!(responses[2].ends_with("\r\n\r\ni-0000abcd"));
}

#[tokio::test]
async fn password_post_over_the_wire() {
    let wire = exchange(concat!(
        "POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecret",
        "GET /openstack/latest/password HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ))
    .await;
    let responses: Vec<&str> = wire.split("HTTP/1.1 ").filter(|r| !r.is_empty()).collect();
    assert_eq!(responses.len(), 2, "{wire}");
    assert!(responses[0].starts_with("200 OK\r\n"));
    assert!(responses[0].contains("content-length: 0\r\n"));
    assert!(responses[1].ends_with("\r\n\r\nsecret"), "{}", responses[1]);
}

#[tokio::test]
async fn chunked_password_over_the_limit_is_413() {
    let config_limit = ApiConfig::default().max_body;
    let chunk = "a".repeat(config_limit + 1);
    let wire = exchange(&format!(
        "POST /openstack/latest/password HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    ))
    .await;
    assert!(
        wire.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{wire}"
    );
}
