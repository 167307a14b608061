//! Configuration loading: bad files fail cleanly with exit status 2 and a
//! useful message, `--check` validates and summarises good files.

mod common;

use common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A valid config body (servers need not be up for loading/checking).
fn good_config() -> Config {
    Config::new(&[9, 10])
}

/// Runs `ekilibri -f path [--check]` to completion.
fn run(path: &Path, check: bool) -> RunResult {
    let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), path.as_os_str()];
    if check {
        args.push(OsStr::new("--check"));
    }
    run_balancer_to_exit(&args, EXIT_TIMEOUT)
}

/// Asserts the bad-config contract for both a normal start and `--check`:
/// exit status 2, the file path and `needle` (the offending key) on stderr,
/// and no panic/backtrace.
fn assert_rejected(path: &Path, needle: Option<&str>) {
    let path_text = path_str(path);
    for check in [false, true] {
        let r = run(path, check);
        let mode = if check { "--check" } else { "start" };
        assert_eq!(
            r.status.code(),
            Some(2),
            "{mode}: expected exit status 2, got {:?}; stderr:\n{}",
            r.status,
            r.stderr
        );
        assert!(
            r.stderr.contains(&path_text),
            "{mode}: stderr does not name the file {path_text:?}:\n{}",
            r.stderr
        );
        if let Some(needle) = needle {
            assert!(
                r.stderr.contains(needle),
                "{mode}: stderr does not name {needle:?}:\n{}",
                r.stderr
            );
        }
        let lower = r.stderr.to_lowercase();
        assert!(
            !lower.contains("panicked") && !lower.contains("backtrace"),
            "{mode}: stderr shows a panic:\n{}",
            r.stderr
        );
    }
}

fn assert_toml_rejected(toml: &str, needle: Option<&str>) {
    let file = write_temp_file(toml, ".toml");
    assert_rejected(&file.path, needle);
}

#[test]
fn missing_file_is_rejected() {
    let path = unique_temp_path("-does-not-exist.toml");
    assert!(!path.exists());
    assert_rejected(&path, None);
}

#[test]
fn invalid_toml_is_rejected() {
    let toml = format!(
        "{}servers = [\"127.0.0.1:9\"\n",
        good_config().remove("servers").to_toml()
    );
    assert_toml_rejected(&toml, None);
}

#[test]
fn unknown_key_is_rejected_and_named() {
    let toml = good_config().with("bogus_setting_xyz", "42").to_toml();
    assert_toml_rejected(&toml, Some("bogus_setting_xyz"));
}

#[test]
fn bad_server_address_is_rejected() {
    let toml = good_config()
        .with("servers", "[\"127.0.0.1:9\", \"not-an-address\"]")
        .to_toml();
    assert_toml_rejected(&toml, Some("servers"));
}

#[test]
fn bad_listen_address_is_rejected() {
    let toml = good_config().with("listen", "\"nowhere\"").to_toml();
    assert_toml_rejected(&toml, Some("listen"));
}

#[test]
fn empty_servers_is_rejected() {
    let toml = good_config().with("servers", "[]").to_toml();
    assert_toml_rejected(&toml, Some("servers"));
}

#[test]
fn zero_pool_size_is_rejected() {
    let toml = good_config().with("pool_size", "0").to_toml();
    assert_toml_rejected(&toml, Some("pool_size"));
}

#[test]
fn unknown_strategy_is_rejected() {
    let toml = good_config().strategy("FastestFirst").to_toml();
    assert_toml_rejected(&toml, Some("strategy"));
}

/// A backend at the balancer's own `listen` or `admin_listen` address, in
/// any spelling, is refused: one line naming `servers` and the key it
/// collides with.
#[test]
fn servers_at_the_balancers_own_addresses_are_rejected() {
    let p = closed_port();
    let q = closed_port();
    let cases = [
        (
            good_config()
                .with("listen", &format!("\"127.0.0.1:{p}\""))
                .with("servers", &format!("[\"127.0.0.1:9\", \"127.0.0.1:{p}\"]")),
            "listen",
        ),
        (
            good_config()
                .with("admin_listen", &format!("\"127.0.0.1:{q}\""))
                .with(
                    "servers",
                    &format!("[{{ address = \"localhost:{q}\", weight = 2 }}]"),
                ),
            "admin_listen",
        ),
        (
            good_config()
                .with("listen", &format!("\"0.0.0.0:{p}\""))
                .with("servers", &format!("[\"[::1]:{p}\"]")),
            "listen",
        ),
        (
            good_config()
                .with("listen", &format!("\"[::]:{p}\""))
                .with("servers", &format!("[\"127.0.0.1:{p}\"]")),
            "listen",
        ),
        // The defaults count too: admin_listen is 127.0.0.1:9090 unless set.
        (
            good_config()
                .remove("admin_listen")
                .with("servers", "[\"127.0.0.1:9090\"]"),
            "admin_listen",
        ),
    ];
    for (cfg, key) in cases {
        let toml = cfg.to_toml();
        assert_toml_rejected(&toml, Some("key `servers`: "));
        let file = write_temp_file(&toml, ".toml");
        let r = run(&file.path, true);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{toml}: one line expected:\n{}", r.stderr);
        assert!(
            lines[0].contains(&format!("own `{key}` address")),
            "{toml}: {}",
            lines[0]
        );
    }
    // Port 0 is picked at start: nothing to collide with yet.
    let file = write_temp_file(
        &good_config().with("servers", "[\"127.0.0.1:1\"]").to_toml(),
        ".toml",
    );
    assert_eq!(run(&file.path, true).status.code(), Some(0));
}

/// Runs `--check` on a good file and returns its single summary line.
fn check_ok(path: &Path) -> String {
    let r = run(path, true);
    assert_eq!(
        r.status.code(),
        Some(0),
        "--check on a good file: {:?}; stdout:\n{}\nstderr:\n{}",
        r.status,
        r.stdout,
        r.stderr
    );
    let lines: Vec<&str> = r.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "--check should print a one-line summary, got:\n{}",
        r.stdout
    );
    assert!(
        lines[0].contains("ok"),
        "summary line lacks \"ok\": {:?}",
        lines[0]
    );
    lines[0].to_string()
}

#[test]
fn check_accepts_good_config() {
    let file = write_temp_file(&good_config().to_toml(), ".toml");
    check_ok(&file.path);
}

#[test]
fn check_accepts_stock_original_config_and_defaults_listen() {
    // Exactly the keys the original Ekilibri understood; no `listen`.
    let toml = r#"servers = [
    "127.0.0.1:8081",
    "127.0.0.1:8082",
    "127.0.0.1:8083"
]
strategy = "LeastConnections"
max_fails = 1
fail_window = 5
connection_timeout = 1000
write_timeout = 1000
read_timeout = 1000
health_check_path = "/health"
pool_size = 10
"#;
    let file = write_temp_file(toml, ".toml");
    let summary = check_ok(&file.path);
    assert!(
        summary.contains("127.0.0.1:8080"),
        "summary should report the default listen address 127.0.0.1:8080: {summary:?}"
    );
}

#[test]
fn check_accepts_all_extension_keys() {
    let toml = r#"listen = "127.0.0.1:0"
workers = 2
servers = ["127.0.0.1:9", { address = "127.0.0.1:10", weight = 2 }, "127.0.0.1:11"]
strategy = "WeightedRoundRobin"
max_fails = 3
fail_window = 10
connection_timeout = 500
write_timeout = 1000
read_timeout = 1000
health_check_path = "/health"
health_check_interval = 250
pool_size = 4
max_header_bytes = 32768
client_header_timeout = 5000
keepalive_timeout = 5000
shutdown_timeout = 2000
"#;
    let file = write_temp_file(toml, ".toml");
    check_ok(&file.path);
    for strategy in [
        "RoundRobin",
        "LeastConnections",
        "Random",
        "WeightedRoundRobin",
        "IpHash",
        "PowerOfTwoChoices",
    ] {
        let file = write_temp_file(&good_config().strategy(strategy).to_toml(), ".toml");
        check_ok(&file.path);
    }
}

#[test]
fn shipped_config_passes_check() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/ekilibri.toml"));
    assert!(path.exists(), "{} is missing", path.display());
    check_ok(path);
}

#[test]
fn second_instance_on_the_same_port_is_refused() {
    // SO_REUSEPORT would let a second balancer share the port silently.
    let first = spawn_balancer(&good_config(), &[]);
    let cfg = good_config().with("listen", &format!("\"127.0.0.1:{}\"", first.port));
    let file = write_temp_file(&cfg.to_toml(), ".toml");
    let r = run_balancer_to_exit(&[OsStr::new("-f"), file.path.as_os_str()], EXIT_TIMEOUT);
    assert_eq!(r.status.code(), Some(1), "stderr: {}", r.stderr);
    assert!(r.stderr.contains("already in use"), "stderr: {}", r.stderr);
    assert!(
        r.stderr.contains(&first.port.to_string()),
        "stderr: {}",
        r.stderr
    );
    // The first instance still serves.
    assert!(std::net::TcpStream::connect(("127.0.0.1", first.port)).is_ok());
}
