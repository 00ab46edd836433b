//! Signed identity through the datapath: guests fetch their identity
//! document, its three signatures and a JWT; a third party verifies them
//! with exactly the commands AWS publishes (`openssl smime -verify`,
//! `openssl dgst -sha256 -verify`) and with PyJWT against the JWKS that
//! `metadata-redirector identity jwks` prints. A guest's signatures never
//! verify another guest's document.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use mdr_harness::fixtures::{GUEST_ADDR as ADDR, GUEST_MAC as MAC};
use mdr_harness::nova::NovaInstance;
use mdr_harness::tempdir::TempDir;
use mdr_harness::{
    Daemon, FakeNova, FakeNovaConfig, Guest, GuestConfig, Host, Instance, TenantNet, cmd, python,
};

const IDENTITY: &str = "/latest/dynamic/instance-identity";

/// A key and self-signed certificate made with the openssl command line,
/// as an operator would.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new(key_kind: &str) -> Result<Self> {
        let dir = TempDir::new("identity-pki")?;
        let key = dir.join("key.pem").to_string_lossy().into_owned();
        let cert = dir.join("cert.pem").to_string_lossy().into_owned();
        let algorithm: &[&str] = match key_kind {
            "rsa" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            _ => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        };
        cmd::run(&[&["openssl", "genpkey", "-out", &key][..], algorithm].concat())?;
        cmd::run(&[
            "openssl",
            "req",
            "-new",
            "-x509",
            "-key",
            &key,
            "-out",
            &cert,
            "-days",
            "1",
            "-subj",
            "/CN=metadata-redirector test identity",
        ])?;
        Ok(Self { dir })
    }

    fn key(&self) -> String {
        self.dir.join("key.pem").to_string_lossy().into_owned()
    }

    fn cert(&self) -> String {
        self.dir.join("cert.pem").to_string_lossy().into_owned()
    }

    fn daemon_args(&self) -> Vec<String> {
        vec![
            "--identity-key".into(),
            self.key(),
            "--identity-cert".into(),
            self.cert(),
            "--identity-issuer".into(),
            "https://mdr.test".into(),
        ]
    }

    /// `metadata-redirector identity jwks`, written to a file.
    fn jwks_file(&self, daemon: &Daemon) -> Result<String> {
        let jwks = daemon.cli_ok(&[
            "identity",
            "jwks",
            "--identity-key",
            &self.key(),
            "--identity-cert",
            &self.cert(),
        ])?;
        let path = self.dir.join("jwks.json");
        std::fs::write(&path, jwks)?;
        Ok(path.to_string_lossy().into_owned())
    }
}

/// What a guest fetched of its identity.
struct Fetched {
    document: String,
    signature: String,
    pkcs7: String,
    rsa2048: Option<String>,
}

fn fetch(guest: &Guest, rsa: bool) -> Result<Fetched> {
    let get = |name: &str| -> Result<String> {
        let reply = guest.http_get(&format!("{IDENTITY}/{name}"))?;
        ensure!(reply.status == 200, "{name}: {reply}");
        Ok(reply.body)
    };
    let rsa2048 = if rsa {
        Some(get("rsa2048")?)
    } else {
        let reply = guest.http_get(&format!("{IDENTITY}/rsa2048"))?;
        ensure!(reply.status == 404, "rsa2048 under an EC key: {reply}");
        None
    };
    Ok(Fetched {
        document: get("document")?,
        signature: get("signature")?,
        pkcs7: get("pkcs7")?,
        rsa2048,
    })
}

/// AWS's PKCS7 steps: the body between BEGIN/END lines (`echo "" >>`
/// adds the newline), then `openssl smime -verify -in pkcs7 -inform PEM
/// -certfile certificate -noverify`. The document it prints, or why not.
fn smime_verify(dir: &Path, pkcs7_body: &str, cert: &str) -> Result<String> {
    let file = dir.join("pkcs7");
    std::fs::write(
        &file,
        format!("-----BEGIN PKCS7-----\n{pkcs7_body}\n-----END PKCS7-----\n"),
    )?;
    let out = Command::new("openssl")
        .args(["smime", "-verify", "-in"])
        .arg(&file)
        .args(["-inform", "PEM", "-certfile", cert, "-noverify"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success() && stderr.contains("Verification successful"),
        "openssl smime -verify: {stderr}"
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// AWS's base64 signature steps: `base64 -d` into `signature`, the public
/// key out of the certificate, `openssl dgst -sha256 -verify key
/// -signature signature document`. Whether it printed `Verified OK`.
fn dgst_verify(dir: &Path, signature_b64: &str, document: &str, cert: &str) -> Result<bool> {
    let (signature, doc, key) = (dir.join("signature"), dir.join("document"), dir.join("key"));
    let decoded = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf '%s' \"$1\" | base64 -d > {}",
            signature.display()
        ))
        .args(["sh", signature_b64])
        .status()?;
    ensure!(decoded.success(), "base64 -d");
    std::fs::write(&doc, document)?;
    let pubkey = cmd::run(&["openssl", "x509", "-pubkey", "-noout", "-in", cert])?;
    std::fs::write(&key, pubkey)?;
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(&key)
        .arg("-signature")
        .arg(&signature)
        .arg(&doc)
        .output()?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"))
}

/// Verifies the guest's JWT with PyJWT; the script's findings.
fn pyjwt(guest: &Guest, jwks: &str, audience: &str, subject: &str) -> Result<serde_json::Value> {
    let reply = guest.http_get(&format!("/openstack/identity?audience={audience}"))?;
    ensure!(reply.status == 200, "/openstack/identity: {reply}");
    let out = Command::new("timeout")
        .args(["-s", "KILL", "30", "python3", "-B"])
        .arg(python::script("verify_jwt.py"))
        .args([jwks, reply.body.trim(), audience, subject])
        .output()?;
    ensure!(
        out.status.success(),
        "verify_jwt.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(stdout.lines().last().unwrap_or(""))?)
}

fn check_token(verdict: &serde_json::Value, alg: &str) {
    assert_eq!(verdict["alg"], alg, "{verdict}");
    assert_eq!(
        verdict["other_audience"], "InvalidAudienceError",
        "{verdict}"
    );
    assert_eq!(verdict["tampered"], "InvalidSignatureError", "{verdict}");
    assert_eq!(
        verdict["an_hour_later"], "ExpiredSignatureError",
        "{verdict}"
    );
    let claims = &verdict["claims"];
    assert_eq!(claims["iss"], "https://mdr.test");
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 3600, "{claims}");
    assert!(
        claims["host"].as_str().is_some_and(|h| !h.is_empty()),
        "{claims}"
    );
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn guests_identities_verify_with_awss_openssl_commands_and_pyjwt_and_never_as_another() {
    let host = Host::new().unwrap();
    let nets = [(); 2].map(|()| TenantNet::with_router_and_decoy(&host).unwrap());
    // Same address and MAC: only the tap tells them apart.
    let guest_a = Guest::new(&nets[0], GuestConfig::new(ADDR, MAC)).unwrap();
    let guest_b = Guest::new(&nets[1], GuestConfig::new(ADDR, MAC)).unwrap();
    let (alpha, beta) = (Instance::sample("alpha"), Instance::sample("beta"));
    let work = TempDir::new("identity-verify").unwrap();

    for key_kind in ["rsa", "ec"] {
        let pki = Pki::new(key_kind).unwrap();
        let daemon = Daemon::start_with_args(&host, &pki.daemon_args()).unwrap();
        daemon.register(&guest_a, &alpha).unwrap();
        daemon.register(&guest_b, &beta).unwrap();
        guest_a.wait_served(&alpha.uuid).unwrap();
        guest_b.wait_served(&beta.uuid).unwrap();
        let rsa = key_kind == "rsa";
        let a = fetch(&guest_a, rsa).unwrap();
        let b = fetch(&guest_b, rsa).unwrap();
        assert!(a.document.contains(&alpha.ec2_id), "{}", a.document);
        assert!(b.document.contains(&beta.ec2_id), "{}", b.document);

        // Option 1 (pkcs7) and 3 (rsa2048): the document comes out of the
        // signature byte for byte, as `openssl dgst -sha256` compares it.
        assert_eq!(
            smime_verify(work.path(), &a.pkcs7, &pki.cert()).unwrap(),
            a.document
        );
        if let Some(rsa2048) = &a.rsa2048 {
            assert_eq!(
                smime_verify(work.path(), rsa2048, &pki.cert()).unwrap(),
                a.document
            );
        }
        // Option 2 (signature).
        assert!(dgst_verify(work.path(), &a.signature, &a.document, &pki.cert()).unwrap());
        // Never as another guest: B's signature over A's document fails, and
        // B's PKCS7 carries B's document, not A's.
        assert!(!dgst_verify(work.path(), &b.signature, &a.document, &pki.cert()).unwrap());
        assert_eq!(
            smime_verify(work.path(), &b.pkcs7, &pki.cert()).unwrap(),
            b.document
        );
        assert_ne!(b.document, a.document);
        // Another key's certificate verifies nothing.
        let stranger = Pki::new(key_kind).unwrap();
        assert!(smime_verify(work.path(), &a.pkcs7, &stranger.cert()).is_err());
        assert!(!dgst_verify(work.path(), &a.signature, &a.document, &stranger.cert()).unwrap());

        let jwks = pki.jwks_file(&daemon).unwrap();
        let verdict = pyjwt(&guest_a, &jwks, "https://vault.test", &alpha.uuid).unwrap();
        check_token(&verdict, if rsa { "RS256" } else { "ES256" });
        let claims = &verdict["claims"];
        assert_eq!(claims["aud"], "https://vault.test");
        assert_eq!(claims["project_id"], alpha.doc["project_id"]);
        assert_eq!(claims["availability_zone"], "nova");
        let verdict = pyjwt(&guest_b, &jwks, "ci", &beta.uuid).unwrap();
        assert_eq!(verdict["claims"]["sub"], beta.uuid.as_str());

        let reply = guest_a.http_get("/openstack/identity").unwrap();
        assert_eq!(reply.status, 400, "no audience: {reply}");
    }
}

#[test]
#[ignore = "root: run via cargo xtask test"]
fn nova_mode_signs_the_taps_instance() {
    let host = Host::new().unwrap();
    let instance = NovaInstance::new();
    let nova = FakeNova::start(
        &host,
        FakeNovaConfig::new("s3cret").project(&instance.uuid, &instance.project),
    )
    .unwrap();
    let net = TenantNet::with_router_and_decoy(&host).unwrap();
    let guest = Guest::new(&net, GuestConfig::new(ADDR, MAC)).unwrap();
    let pki = Pki::new("ec").unwrap();
    let mut args = nova.daemon_args(&nova.secret_file());
    args.extend(pki.daemon_args());
    let daemon = Daemon::start_with_args(&host, &args).unwrap();
    daemon
        .add_nova_port(guest.tap(), &instance, MAC, ADDR, None)
        .unwrap();
    guest.wait_served(&instance.uuid).unwrap();

    let jwks = pki.jwks_file(&daemon).unwrap();
    // The guest claims to be someone else: nothing it says counts.
    let reply = guest
        .http_get_with(
            "/openstack/identity?audience=spire",
            &["X-Instance-ID: 00000000-0000-0000-0000-000000000001"],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(reply.status, 200, "{reply}");
    let verdict = pyjwt(&guest, &jwks, "spire", &instance.uuid).unwrap();
    check_token(&verdict, "ES256");
    assert_eq!(verdict["claims"]["project_id"], instance.project.as_str());

    let work = TempDir::new("identity-verify").unwrap();
    let fetched = fetch(&guest, false).unwrap();
    assert!(
        fetched.document.contains(&instance.project),
        "{}",
        fetched.document
    );
    assert_eq!(
        smime_verify(work.path(), &fetched.pkcs7, &pki.cert()).unwrap(),
        fetched.document
    );
    assert!(
        dgst_verify(
            work.path(),
            &fetched.signature,
            &fetched.document,
            &pki.cert()
        )
        .unwrap()
    );
}
