//! Test harness for the ACME tests: starts the fake Cloudflare API, `pebble-challtestsrv` and
//! `pebble` on loopback, each killed when its guard drops. Shared by `relay/tests/dns*.rs` and
//! `daemon/tests/acme*.rs` through `#[path]`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child process when dropped.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback TCP port (bound then released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate dir has a parent")
        .to_path_buf()
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on 127.0.0.1:{port}");
}

/// The fake Cloudflare API; `api_url` ends in `/client/v4`.
pub struct FakeCloudflare {
    pub guard: ChildGuard,
    pub port: u16,
    pub api_url: String,
}

impl FakeCloudflare {
    /// Starts the fake with `token`; mirrors TXT records to challtestsrv when given its
    /// management URL.
    pub fn start(token: &str, zone_id: &str, zone_name: &str, challtestsrv: Option<&str>) -> Self {
        let script = repo_root().join("tests/acme/fake_cloudflare.py");
        let mut cmd = Command::new("python3");
        cmd.arg(script)
            .args([
                "--token",
                token,
                "--zone-id",
                zone_id,
                "--zone-name",
                zone_name,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(url) = challtestsrv {
            cmd.args(["--challtestsrv", url]);
        }
        let mut child = cmd
            .spawn()
            .expect("start python3 tests/acme/fake_cloudflare.py");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the fake's first line");
        let port: u16 = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the fake: {line:?}"));
        Self {
            guard: ChildGuard(child),
            port,
            api_url: format!("http://127.0.0.1:{port}/client/v4"),
        }
    }

    /// Makes every API call fail with `status` (0 = normal again).
    pub fn set_failure(&self, status: u16) {
        http_post(self.port, "/_fake/fail", &status.to_string());
    }

    /// All records the fake holds: (name, content).
    pub fn records(&self) -> Vec<(String, String)> {
        let body = http_get(self.port, "/_fake/records");
        let v: serde_json::Value = serde_json::from_str(&body).expect("fake answers JSON");
        v["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    r["content"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

fn http_request(port: u16, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// A tiny blocking HTTP/1.0 GET; returns the body.
pub fn http_get(port: u16, path: &str) -> String {
    http_request(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
}

/// A tiny blocking HTTP/1.0 POST; returns the body.
pub fn http_post(port: u16, path: &str, body: &str) -> String {
    http_request(
        port,
        &format!(
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Whether the Pebble binaries are installed (Debian package `pebble`).
pub fn pebble_installed() -> bool {
    ["pebble", "pebble-challtestsrv"].iter().all(|bin| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    })
}

/// Whether a test that needs Pebble can run: true when it is installed; false (the test
/// skips, saying so) when it is not and `GATE_SKIP_PEBBLE` is set; otherwise the test fails
/// with how to install it.
pub fn require_pebble() -> bool {
    if pebble_installed() {
        return true;
    }
    assert!(
        std::env::var_os("GATE_SKIP_PEBBLE").is_some(),
        "pebble is not installed: apt-get install -y pebble (test.sh installs it; or set GATE_SKIP_PEBBLE=1)"
    );
    eprintln!("skipping: pebble not installed and GATE_SKIP_PEBBLE is set");
    false
}

/// `pebble-challtestsrv` serving DNS on `dns_port` and its management API on `management_port`.
pub struct ChallTestSrv {
    pub guard: ChildGuard,
    pub dns_port: u16,
    pub management_port: u16,
}

impl ChallTestSrv {
    pub fn start() -> Self {
        let dns_port = free_port();
        let management_port = free_port();
        let child = Command::new("pebble-challtestsrv")
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-management",
                &format!("127.0.0.1:{management_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv (Debian package pebble)");
        let guard = ChildGuard(child);
        wait_for_port(management_port, "pebble-challtestsrv");
        Self {
            guard,
            dns_port,
            management_port,
        }
    }

    pub fn management_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.management_port)
    }
}

/// Pebble with an HTTPS certificate signed by a test CA written to `dir`.
pub struct Pebble {
    pub guard: ChildGuard,
    pub port: u16,
    pub management_port: u16,
    /// PEM of the CA that signs Pebble's HTTPS (the `letsencrypt.ca_file`).
    pub https_ca_file: PathBuf,
}

impl Pebble {
    /// Starts Pebble resolving names through `dns` (challtestsrv); issued certificates live
    /// `validity_seconds`.
    pub fn start(dir: &Path, dns: &ChallTestSrv, validity_seconds: u64) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "gate test pebble HTTPS CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = leaf_params
            .signed_by(&leaf_key, &issuer)
            .expect("leaf cert");
        std::fs::create_dir_all(dir).expect("pebble dir");
        let https_ca_file = dir.join("pebble-https-ca.pem");
        std::fs::write(&https_ca_file, ca_cert.pem()).expect("write CA");
        std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert");
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).expect("write key");
        let port = free_port();
        let management_port = free_port();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.join("cert.pem"),
                "privateKey": dir.join("key.pem"),
                "httpPort": 5002,
                "tlsPort": 5001,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_seconds,
            }
        });
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble config");
        let log = std::fs::File::create(dir.join("pebble.log")).expect("pebble log");
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", dns.dns_port))
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start pebble (Debian package pebble)");
        let guard = ChildGuard(child);
        wait_for_port(port, "pebble");
        wait_for_port(management_port, "pebble management");
        Self {
            guard,
            port,
            management_port,
            https_ca_file,
        }
    }

    pub fn directory_url(&self) -> String {
        format!("https://localhost:{}/dir", self.port)
    }

    /// Pebble's issuing root (PEM), which the certificates it issues chain to.
    pub fn root_pem(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&self.https_ca_file)
            .arg(format!(
                "https://localhost:{}/roots/0",
                self.management_port
            ))
            .output()
            .expect("run curl");
        assert!(out.status.success(), "curl /roots/0 failed: {out:?}");
        String::from_utf8(out.stdout).expect("PEM is text")
    }
}
