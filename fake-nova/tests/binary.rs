//! The `fake-nova` binary as end-to-end tests drive it: start, print where
//! it listens, answer a signed request, log it as one JSON line.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
};

#[test]
fn binary_logs_requests_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-nova"))
        .args(["--listen", "127.0.0.1:0", "--secret-file"])
        .arg(&secret)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let addr = first["listening"].as_str().unwrap().to_owned();

    let instance = "6c8a3b0e-1d6f-4d2b-9a57-0f4ad3a7e001";
    let signature = fake_nova::sign_instance_id(b"s3cret", instance);
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: nova\r\nX-Instance-ID: {instance}\r\n\
         X-Tenant-ID: p1\r\nX-Instance-ID-Signature: {signature}\r\nX-Forwarded-For: 10.0.0.5\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let logged: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(logged["path"], "/openstack/latest/meta_data.json");
    assert_eq!(logged["status"], 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn binary_writes_a_test_pki() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_fake-nova"))
        .arg("--write-test-pki")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    for name in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "client.pem",
        "client-key.pem",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert!(text.starts_with("-----BEGIN "), "{name}");
    }
}
