//! `TestServer`: the real `pkgfs serve` binary on an ephemeral loopback
//! port with a fresh data directory, a random token for the default user
//! (`alice`) and the test hooks on. The process is killed and reaped on
//! drop, also when a test panics.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use url::Url;

/// A running `pkgfs serve`.
pub struct TestServer {
    /// Base URL with a trailing slash, e.g. `http://127.0.0.1:40000/`.
    pub url: String,
    /// Base URL of the `--serve-direct` listener, if on.
    pub direct_url: Option<String>,
    /// The data directory (`--data`).
    pub data: PathBuf,
    /// Token of the default user `alice` (scope `all`).
    pub token: String,
    /// A client without redirects.
    pub http: reqwest::Client,
    child: Child,
    args: Vec<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    // Removed last: the process must be gone before its directory.
    root: TempDir,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // Below the server's 30 s keep-alive limit (hyper's header read
        // timeout), so a pooled connection is never reused as it closes.
        .pool_idle_timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl TestServer {
    /// Starts with `--test-hooks` plus `extra` arguments.
    pub fn start(extra: &[&str]) -> TestServer {
        let mut args = vec!["--test-hooks"];
        args.extend_from_slice(extra);
        Self::start_raw(&args, None)
    }

    /// Starts with `--test-hooks`, `--config` holding `config` (TOML) and
    /// `extra` arguments.
    pub fn start_with_config(config: &str, extra: &[&str]) -> TestServer {
        let mut args = vec!["--test-hooks"];
        args.extend_from_slice(extra);
        Self::start_raw(&args, Some(config))
    }

    /// Starts with exactly `extra` arguments (no `--test-hooks`).
    pub fn start_raw(extra: &[&str], config: Option<&str>) -> TestServer {
        let root = tempfile::Builder::new()
            .prefix("pkgfs-serve-test")
            .tempdir()
            .expect("temp dir");
        let data = root.path().join("data");
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(cfg) = config {
            let path = root.path().join("config.toml");
            std::fs::File::create(&path)
                .and_then(|mut f| f.write_all(cfg.as_bytes()))
                .expect("writing config");
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        let token = random_token();
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let (child, url, direct_url) = spawn(&data, &token, &args, "127.0.0.1:0", stderr.clone());
        TestServer {
            url,
            direct_url,
            data,
            token,
            http: client(),
            child,
            args,
            stderr,
            root,
        }
    }

    /// Stops the server and starts it again on the same port and data.
    /// The client is renewed: its pooled connections went with the server.
    pub fn restart(&mut self) {
        self.stop();
        self.http = client();
        let port = Url::parse(&self.url)
            .ok()
            .and_then(|u| u.port())
            .expect("port of the server URL");
        let listen = format!("127.0.0.1:{port}");
        let (child, url, direct_url) = spawn(
            &self.data,
            &self.token,
            &self.args,
            &listen,
            self.stderr.clone(),
        );
        self.child = child;
        self.url = url;
        self.direct_url = direct_url;
    }

    /// Kills the process and waits for it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (at most 10 s) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pkgfs serve did not stop on SIGTERM");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the server wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let lines = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Peak resident set size of the server (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// The base URL as a `Url`.
    pub fn base(&self) -> Url {
        Url::parse(&self.url).expect("server URL")
    }

    /// URL of a file.
    pub fn file_url(&self, owner: &str, name: &str, version: &str, file: &str) -> Url {
        pkgfs::protocol::paths::file_url(&self.base(), owner, name, version, file)
    }

    /// URL below the base, e.g. `api/v1/user`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path.trim_start_matches('/'))
    }

    /// `Authorization` value for the default user.
    pub fn auth(&self) -> String {
        format!("token {}", self.token)
    }

    /// Uploads a file as the default user; returns the status.
    pub async fn put(
        &self,
        owner: &str,
        name: &str,
        version: &str,
        file: &str,
        bytes: &[u8],
    ) -> StatusCode {
        self.http
            .put(self.file_url(owner, name, version, file))
            .header("Authorization", self.auth())
            .body(bytes.to_vec())
            .send()
            .await
            .expect("PUT")
            .status()
    }

    /// Downloads a file as the default user: status and body.
    pub async fn get(
        &self,
        owner: &str,
        name: &str,
        version: &str,
        file: &str,
    ) -> (StatusCode, Vec<u8>) {
        let r = self
            .http
            .get(self.file_url(owner, name, version, file))
            .header("Authorization", self.auth())
            .send()
            .await
            .expect("GET");
        let status = r.status();
        (status, r.bytes().await.expect("body").to_vec())
    }

    /// GET of a v1 path as the default user: status and JSON body.
    pub async fn v1(&self, path: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.at(path))
            .header("Authorization", self.auth())
            .send()
            .await
            .expect("GET v1");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends raw bytes on a new connection and returns what the server
    /// answers until it closes the connection or 5 s pass. The request
    /// should carry `Connection: close`.
    pub async fn raw(&self, request: &[u8]) -> String {
        String::from_utf8_lossy(&self.raw_bytes(request).await).into_owned()
    }

    /// Like [`TestServer::raw`], as bytes.
    pub async fn raw_bytes(&self, request: &[u8]) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.base().socket_addrs(|| None).expect("address")[0];
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The server may answer and close before it has read everything.
        let _ = conn.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
        out
    }

    /// The test-hook counters.
    pub async fn stats(&self) -> Value {
        self.http
            .get(self.at("_pkgfs/test/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats JSON")
    }

    /// Zeroes the counters and clears the faults.
    pub async fn reset(&self) {
        let s = self
            .http
            .post(self.at("_pkgfs/test/reset"))
            .send()
            .await
            .expect("reset")
            .status();
        assert!(s.is_success(), "reset: {s}");
    }

    /// Installs a fault (see README "pkgfs serve", test hooks).
    pub async fn fault(&self, spec: Value) {
        let s = self
            .http
            .post(self.at("_pkgfs/test/fault"))
            .json(&spec)
            .send()
            .await
            .expect("fault")
            .status();
        assert!(s.is_success(), "fault: {s}");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(
    data: &std::path::Path,
    token: &str,
    args: &[String],
    listen: &str,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
) -> (Child, String, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pkgfs"))
        .arg("serve")
        .args(["--listen", listen])
        .arg("--data")
        .arg(data)
        .args(args)
        .env("PKGFS_SERVE_TOKEN", token)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting pkgfs serve");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let echo = std::env::var_os("PKGFS_TEST_LOG").is_some();
    let tail_for_panic = stderr_tail.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("[serve] {line}");
            }
            let mut tail = stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.push_back(line);
            if tail.len() > 200 {
                tail.pop_front();
            }
        }
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut direct = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(u) = line.strip_prefix("direct on ") {
                direct = Some(format!("{u}/"));
            } else if let Some(u) = line.strip_prefix("listening on ") {
                let _ = tx.send((format!("{u}/"), direct.take()));
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok((url, direct)) => (child, url, direct),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(100));
            let tail = tail_for_panic.lock().unwrap_or_else(|e| e.into_inner());
            let tail: Vec<String> = tail.iter().cloned().collect();
            panic!(
                "pkgfs serve did not become ready; args {args:?}; stderr:\n{}",
                tail.join("\n")
            );
        }
    }
}
