//! The deployment files agree with each other and with the binary: the
//! systemd unit, the man page and the Debian package metadata. Static
//! checks, no systemd or cargo-deb needed (tools/package/check-deb.sh builds
//! and inspects the real package).

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ekilibri");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The unit's `(section, key, value)` settings, comments dropped.
fn unit_settings() -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for (n, line) in read("tools/systemd/ekilibri.service").lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("unit line {}: not key=value: {line}", n + 1));
        assert!(
            !section.is_empty(),
            "unit line {}: outside a section",
            n + 1
        );
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

fn unit_value(settings: &[(String, String, String)], section: &str, key: &str) -> String {
    let found: Vec<&str> = settings
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "[{section}] {key}= should be set once: {found:?}"
    );
    found[0].to_string()
}

#[test]
fn unit_has_the_required_settings() {
    let s = unit_settings();
    for (section, key, value) in [
        ("Service", "Type", "notify"),
        (
            "Service",
            "ExecStart",
            "/usr/bin/ekilibri -f /etc/ekilibri/ekilibri.toml",
        ),
        ("Service", "Restart", "on-failure"),
        ("Service", "RestartPreventExitStatus", "2"),
        ("Service", "LimitNOFILE", "1048576"),
        ("Service", "LimitMEMLOCK", "infinity"),
        ("Service", "DynamicUser", "yes"),
        ("Service", "ProtectSystem", "strict"),
        ("Service", "ProtectHome", "yes"),
        ("Service", "NoNewPrivileges", "yes"),
        ("Service", "PrivateTmp", "yes"),
        ("Service", "CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("Service", "AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("Install", "WantedBy", "multi-user.target"),
    ] {
        assert_eq!(unit_value(&s, section, key), value, "[{section}] {key}=");
    }
    // A reload checks the file first (as HAProxy's unit does), then signals.
    let reload: Vec<&str> = s
        .iter()
        .filter(|(section, key, _)| section == "Service" && key == "ExecReload")
        .map(|(_, _, v)| v.as_str())
        .collect();
    assert_eq!(
        reload,
        [
            "/usr/bin/ekilibri --check -f /etc/ekilibri/ekilibri.toml",
            "/bin/kill -HUP $MAINPID"
        ],
        "ExecReload= lines"
    );
    // io_uring must survive the system call filter.
    let filter = unit_value(&s, "Service", "SystemCallFilter");
    assert_eq!(
        filter, "@system-service",
        "@system-service includes @aio (io_uring_*)"
    );
    let text = read("tools/systemd/ekilibri.service");
    assert!(
        text.contains("Socket activation") && text.contains("ReusePort=yes"),
        "the unit explains why socket activation is not used"
    );
}

#[test]
fn package_assets_exist_and_match_the_unit() {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml");
    let deb = manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]");
    for key in ["maintainer", "copyright", "extended-description"] {
        assert!(deb.contains_key(key), "[package.metadata.deb] lacks {key}");
    }
    assert_eq!(deb["depends"].as_str(), Some("$auto"));
    assert_eq!(deb["section"].as_str(), Some("net"));
    assert_eq!(deb["priority"].as_str(), Some("optional"));
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("asset [src, dest, mode]");
            (
                a[0].as_str().unwrap().to_string(),
                format!("/{}", a[1].as_str().unwrap()),
            )
        })
        .collect();
    let dest_of = |src: &str| {
        assets
            .iter()
            .find(|(s, _)| s == src)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("no asset from {src}: {assets:?}"))
    };
    assert_eq!(dest_of("target/release/ekilibri"), "/usr/bin/ekilibri");
    assert_eq!(dest_of("ekilibri.toml"), "/etc/ekilibri/ekilibri.toml");
    assert_eq!(
        dest_of("tools/systemd/ekilibri.service"),
        "/lib/systemd/system/ekilibri.service"
    );
    assert_eq!(dest_of("README.md"), "/usr/share/doc/ekilibri/README");
    assert_eq!(
        dest_of("tools/man/ekilibri.1"),
        "/usr/share/man/man1/ekilibri.1"
    );
    for (src, _) in &assets {
        if !src.starts_with("target/") {
            assert!(repo(src).is_file(), "asset {src} does not exist");
        }
    }
    let conf: Vec<&str> = deb["conf-files"]
        .as_array()
        .expect("conf-files")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(conf, ["/etc/ekilibri/ekilibri.toml"]);
    // The unit runs the packaged binary on the packaged configuration.
    let exec = unit_value(&unit_settings(), "Service", "ExecStart");
    assert_eq!(
        exec,
        format!("{} -f {}", dest_of("target/release/ekilibri"), conf[0])
    );
}

#[test]
fn man_page_has_the_sections_and_every_option() {
    let man = read("tools/man/ekilibri.1");
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "FILES",
        "SIGNALS",
        "EXIT STATUS",
        "SEE ALSO",
    ] {
        assert!(
            man.lines()
                .any(|l| l == format!(".SH {section}") || l == format!(".SH \"{section}\"")),
            "man page lacks .SH {section}"
        );
    }
    // Every long option `ekilibri --help` lists is documented (roff writes
    // `-` as `\-`).
    let help = Command::new(BIN).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let options: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(','))
        .collect();
    assert!(options.contains(&"--check"), "{help}");
    let roff_plain = man.replace("\\-", "-");
    for opt in options {
        assert!(roff_plain.contains(opt), "man page does not document {opt}");
    }
}

/// Needs `systemd-analyze` (Debian package `systemd`, installed by
/// .ci/run). tools/package/check-deb.sh runs the same verification on the
/// package.
#[test]
fn unit_passes_systemd_analyze_verify() {
    let dir = std::env::temp_dir().join(format!("ekilibri-unit-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("man/man1")).unwrap();
    // verify checks that ExecStart's binary exists and that the man page in
    // Documentation= resolves: point both at this build.
    let unit = read("tools/systemd/ekilibri.service").replace("/usr/bin/ekilibri", BIN);
    std::fs::write(dir.join("ekilibri.service"), unit).unwrap();
    std::fs::copy(
        repo("tools/man/ekilibri.1"),
        dir.join("man/man1/ekilibri.1"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("ekilibri.service"))
        .env("MANPATH", format!("{}:", dir.join("man").display()))
        .output()
        .expect("systemd-analyze is not installed (apt-get install systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `Type=notify`: READY=1 once the workers accept, STOPPING=1 on SIGTERM
/// (without READY=1 systemd kills the service after TimeoutStartSec).
#[test]
fn notifies_systemd_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("ekilibri-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let cfg = dir.join("ekilibri.toml");
    std::fs::write(
        &cfg,
        "servers = [\"127.0.0.1:9\"]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"\"\nworkers = 1\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("-f")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ekilibri");
    let mut buf = [0u8; 512];
    let mut recv = || -> String {
        match sock.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => format!("<nothing: {e}>"),
        }
    };
    let ready = recv();
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let stopping = recv();
    let status = child.wait().expect("wait");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ready, "READY=1");
    assert_eq!(stopping, "STOPPING=1");
    assert!(status.success(), "{status:?}");
}

/// The unit's first `ExecReload=` checks the same file `ExecStart=` runs,
/// and fails on a bad file (so `systemctl reload` fails before any signal)
/// while passing a good one.
#[test]
fn exec_reload_check_fails_on_a_bad_file() {
    let s = unit_settings();
    let start = unit_value(&s, "Service", "ExecStart");
    let check = s
        .iter()
        .find(|(section, key, _)| section == "Service" && key == "ExecReload")
        .map(|(_, _, v)| v.clone())
        .expect("ExecReload=");
    let args: Vec<&str> = check.split_whitespace().collect();
    assert_eq!(args[0], start.split_whitespace().next().unwrap_or(""));
    assert!(args.contains(&"--check"), "{check}");
    let file_arg = |cmd: &str| {
        let words: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        let i = words.iter().position(|w| w == "-f").expect("-f");
        words[i + 1].clone()
    };
    assert_eq!(file_arg(&check), file_arg(&start), "both use one file");

    let dir = std::env::temp_dir().join(format!("ekilibri-reload-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |text: &str| {
        let cfg = dir.join("ekilibri.toml");
        std::fs::write(&cfg, text).unwrap();
        // The packaged path, pointed at this test's file.
        let argv: Vec<std::ffi::OsString> = args[1..]
            .iter()
            .map(|a| {
                if *a == file_arg(&check) {
                    cfg.clone().into_os_string()
                } else {
                    (*a).into()
                }
            })
            .collect();
        Command::new(BIN)
            .args(argv)
            .output()
            .expect("run ekilibri --check")
    };
    let good = run("servers = [\"127.0.0.1:9\"]\nworkers = 1\n");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let bad = run("servers = [\"127.0.0.1:9\"]\nworkers = 1\naccess_log_format = \"$nope\"\n");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("access_log_format"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
