//! Bad input: random names — unicode, control characters, `..`,
//! percent-encodings, spaces, names longer than 255 bytes — through
//! lookup (`stat`), create (`File::create`) and `mkdir` at every level of a
//! real mount. Only clean errors come back, the daemon stays up, and no
//! invalid name ever reaches the registry as a PUT.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::mount::Mount;
use common::server::TestServer;
use pkgfs::protocol::validate::{client_version_ok, validate_filename, validate_package_name};

const PIECES: &[&str] = &[
    "a", "Z9", "..", ".", "%2F", "%2f", "%2e%2e", "%00", " ", "\t", "\n", "\r", "\u{1}", "\u{7f}",
    "ü", "日本", "🦀", "\u{202e}", "\u{a0}", "?", "#", "&", "+", "=", "\\", ":", "'", "\"", "*",
    "-", "_", "~", "[x]", "{y}", "(z)", "@", "$", "^", "!", ";", ",", "<", ">", "|", "`",
];

/// Deterministic random names from the pieces above, plus long ones.
fn names() -> Vec<String> {
    let mut out: Vec<String> = vec![
        "..".into(),
        "...".into(),
        "%2F".into(),
        "a%2Fb".into(),
        "%2e%2e".into(),
        " lead".into(),
        "trail ".into(),
        "x".repeat(255),
        "y".repeat(256),
        "z".repeat(1000),
        "é".repeat(128), // 256 bytes
    ];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..160 {
        let mut s = String::new();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for k in 0..(1 + x % 4) {
            s.push_str(PIECES[((x >> (8 * k)) % PIECES.len() as u64) as usize]);
        }
        out.push(s);
    }
    out
}

fn errno(r: std::io::Result<()>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

const ALLOWED: &[i32] = &[
    libc::ENOENT,
    libc::EINVAL,
    libc::ENAMETOOLONG,
    libc::EEXIST,
    libc::EPERM,
];

#[test]
fn random_names_get_clean_errors_and_no_request_when_invalid() {
    let server = TestServer::start(&[]);
    server.put_ok("alice", "pkg", "1.0", "f.bin", b"x");
    let m = Mount::start(&server.url, Some(&server.token), &["--metadata-ttl", "600"]);
    let _ = std::fs::read_dir(m.path("alice/pkg/1.0")).unwrap();
    server.reset_now();
    let levels = ["", "alice", "alice/pkg", "alice/pkg/1.0"];
    let mut created_files = HashSet::new();
    let mut bad = Vec::new();
    for name in names() {
        for (depth, level) in levels.iter().enumerate() {
            let dir = m.path(level);
            let p = dir.join(&name);
            let valid = match depth {
                0 => false, // owners cannot be created
                1 => validate_package_name(&name).is_ok(),
                2 => client_version_ok(&name),
                _ => validate_filename(&name).is_ok() && !name.starts_with('.'),
            } && name.len() <= 255;
            // A package name the registry would refuse is refused here,
            // before any request (a valid one is looked up on the registry).
            let dots = name == "." || name == "..";
            let must_stay_local = depth == 1 && !valid && !dots;
            let requests = || server.stats_now()["requests"].as_u64().unwrap();
            let before = must_stay_local.then(requests);
            let ops: [(&str, Option<i32>); 3] = [
                ("stat", errno(std::fs::symlink_metadata(&p).map(|_| ()))),
                // fsync publishes the empty file now and reports the outcome
                // (close() would leave it to the asynchronous release).
                (
                    "create",
                    errno(std::fs::File::create(&p).and_then(|f| f.sync_all())),
                ),
                ("mkdir", errno(std::fs::create_dir(&p))),
            ];
            if let Some(before) = before {
                let after = requests();
                if after != before {
                    bad.push(format!(
                        "{level}/{name:?}: {} request(s) for an invalid name",
                        after - before
                    ));
                }
            }
            // `.` and `..` are resolved by the kernel (EISDIR for create);
            // names starting with `.` are local scratch files in a version.
            let scratch = depth == 3 && name.starts_with('.') && name.len() <= 255;
            for (op, e) in ops {
                match e {
                    _ if dots => {}
                    None if scratch => {}
                    None if op == "stat" => {} // an existing (or just created) name
                    None if valid => {
                        if op == "create" {
                            created_files.insert(name.clone());
                        }
                    }
                    None => bad.push(format!("{op} {level}/{name:?} succeeded")),
                    Some(e) if ALLOWED.contains(&e) => {}
                    // create(2) of a directory made by an earlier mkdir.
                    Some(libc::EISDIR) if op == "create" && p.is_dir() => {}
                    Some(e) => bad.push(format!("{op} {level}/{name:?}: errno {e}")),
                }
            }
        }
        assert!(
            common::mount::is_mounted(m.dir.path()),
            "the mount died at {name:?}:\n{}",
            m.log_text()
        );
    }
    assert!(bad.is_empty(), "unexpected outcomes:\n{}", bad.join("\n"));
    // The daemon is alive and serving.
    assert_eq!(std::fs::read(m.path("alice/pkg/1.0/f.bin")).unwrap(), b"x");
    let log = m.log_text();
    assert!(!log.contains("panicked"), "{log}");
    // PUTs only for valid names, and they arrived under their literal
    // name: `a%2Fb` is a file called `a%2Fb`, not `a/b`.
    let stats = server.stats_now();
    assert_eq!(
        stats["file_put"].as_u64(),
        Some(created_files.len() as u64),
        "PUTs for {created_files:?}: {stats}"
    );
    let listed: HashSet<String> = server
        .files("alice", "pkg", "1.0")
        .iter()
        .filter_map(|f| f["name"].as_str().map(str::to_string))
        .filter(|n| n != "f.bin")
        .collect();
    assert_eq!(listed, created_files);
    assert!(listed.contains("a%2Fb") && listed.contains("%2e%2e"));
    for n in &listed {
        assert!(validate_filename(n).is_ok(), "{n:?} reached the registry");
    }
    assert!(!Path::new(&m.path("alice/pkg/1.0/a")).join("b").exists());
}
