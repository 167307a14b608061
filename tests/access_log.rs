//! The access log as standard tools read it: nginx's `combined` lines
//! parsed by the regex log parsers use, JSON lines parsed by Python's
//! `json.loads`, custom templates, the file sink and its logrotate-style
//! reopen on SIGUSR1. Real binaries over loopback; Python 3 is the parser.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};

/// Longest wait for lines to reach the log (they are flushed every 100 ms).
const WAIT: Duration = Duration::from_secs(10);

/// The nginx `combined` regex of common log parsers (as in GoAccess's and
/// the Python log parsers' patterns), with the time checked by `strptime`.
const PARSE_COMBINED: &str = r#"
import datetime, json, re, sys
pat = re.compile(r'^(?P<remote_addr>\S+) - (?P<remote_user>\S+) \[(?P<time_local>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) (?P<body_bytes_sent>\d+) "(?P<http_referer>[^"]*)" "(?P<http_user_agent>[^"]*)"$')
out = []
for n, line in enumerate(open(sys.argv[1], encoding="ascii").read().splitlines()):
    m = pat.match(line)
    if m is None:
        sys.exit("line %d does not match the combined regex: %r" % (n + 1, line))
    d = m.groupdict()
    datetime.datetime.strptime(d["time_local"], "%d/%b/%Y:%H:%M:%S %z")
    out.append(d)
print(json.dumps(out))
"#;

/// Every line through `json.loads`, and `time_iso8601` through
/// `datetime.fromisoformat`.
const PARSE_JSON: &str = r#"
import datetime, json, sys
out = []
for n, line in enumerate(open(sys.argv[1], encoding="utf-8").read().splitlines()):
    try:
        v = json.loads(line)
    except ValueError as e:
        sys.exit("line %d is not JSON (%s): %r" % (n + 1, e, line))
    if not isinstance(v, dict):
        sys.exit("line %d is not an object: %r" % (n + 1, line))
    datetime.datetime.fromisoformat(v["time_iso8601"])
    out.append(v)
print(json.dumps(out))
"#;

/// Runs a Python parser over `path`; its JSON answer.
#[track_caller]
fn python_parse(script: &str, path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .expect("python3 is needed by these tests");
    assert!(
        out.status.success(),
        "the parser refused {}: {}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read(path)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[track_caller]
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    poll_until(WAIT, || {
        let l = lines_of(path);
        (l.len() >= n).then_some(l)
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than {n} lines in {}: {:?}",
            path.display(),
            lines_of(path)
        )
    })
}

/// A config logging `format` to a fresh temp file.
fn logging(backend: &Backend, format: &str, file: &TempFile) -> Config {
    Config::for_backends(std::slice::from_ref(backend))
        .with("access_log", &format!("\"{format}\""))
        .with("access_log_path", &format!("\"{}\"", path_str(&file.path)))
}

fn temp_log() -> TempFile {
    TempFile {
        path: unique_temp_path(".log"),
    }
}

/// Sends a raw request on a fresh connection; the response.
fn raw(port: u16, request: &[u8], method: &str) -> Response {
    let mut c = Conn::connect(port);
    c.send(request);
    c.read_response_for(method)
}

/// The requests both format tests send: HTTP/1.0 and 1.1, with and without
/// Referer and User-Agent, a quote in the target, a HEAD, a POST with a
/// body, and a malformed request line. Returns the body length the client
/// received for each, in order.
fn send_mix(port: u16) -> Vec<(&'static str, u16, usize)> {
    let mut seen = Vec::new();
    let r = raw(port, b"GET /one?x=1 HTTP/1.0\r\n\r\n", "GET");
    seen.push(("GET /one?x=1 HTTP/1.0", r.status, r.body.len()));
    let r = raw(
        port,
        b"GET /two HTTP/1.0\r\nReferer: http://ref.example/a\r\nUser-Agent: Mozilla/5.0 (X11; \"quoted\")\r\n\r\n",
        "GET",
    );
    seen.push(("GET /two HTTP/1.0", r.status, r.body.len()));
    let r = one_request(
        port,
        "GET",
        "/three",
        &[
            ("Referer", "http://ref.example/b"),
            ("User-Agent", "curl/8.5.0"),
        ],
        b"",
    );
    seen.push(("GET /three HTTP/1.1", r.status, r.body.len()));
    let r = one_request(port, "HEAD", "/", &[], b"");
    seen.push(("HEAD / HTTP/1.1", r.status, r.body.len()));
    let r = one_request(port, "POST", "/echo", &[], b"12345");
    seen.push(("POST /echo HTTP/1.1", r.status, r.body.len()));
    let r = raw(
        port,
        b"GET /four?q=\"x\" HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET",
    );
    seen.push(("GET /four?q=\"x\" HTTP/1.1", r.status, r.body.len()));
    let r = raw(port, b"NOT A REQUEST\r\n\r\n", "GET");
    seen.push(("NOT A REQUEST", r.status, r.body.len()));
    seen
}

/// nginx's log escaping of a request line.
fn nginx_escaped(s: &str) -> String {
    s.replace('"', "\\x22")
}

#[test]
fn combined_lines_match_the_nginx_regex() {
    let a = spawn_backend();
    let file = temp_log();
    let lb = spawn_balancer(&logging(&a, "combined", &file), &[]);
    let sent = send_mix(lb.port);
    wait_lines(&file.path, sent.len());
    let entries = python_parse(PARSE_COMBINED, &file.path);
    assert_eq!(entries.len(), sent.len(), "{entries:?}");
    for (request, status, body_len) in &sent {
        let want = nginx_escaped(request);
        let e = entries
            .iter()
            .find(|e| e["request"] == want.as_str())
            .unwrap_or_else(|| panic!("no line for {want}: {entries:?}"));
        assert_eq!(e["remote_addr"], "127.0.0.1", "{e}");
        assert_eq!(e["remote_user"], "-", "{e}");
        assert_eq!(e["status"], status.to_string().as_str(), "{e}");
        assert_eq!(
            e["body_bytes_sent"],
            body_len.to_string().as_str(),
            "body bytes only: {e}"
        );
    }
    let two = entries.iter().find(|e| e["request"] == "GET /two HTTP/1.0");
    let two = two.expect("line of /two");
    assert_eq!(two["http_referer"], "http://ref.example/a");
    assert_eq!(
        two["http_user_agent"],
        "Mozilla/5.0 (X11; \\x22quoted\\x22)"
    );
    let one = entries
        .iter()
        .find(|e| e["request"] == "GET /one?x=1 HTTP/1.0");
    let one = one.expect("line of /one");
    assert_eq!(one["http_referer"], "-");
    assert_eq!(one["http_user_agent"], "-");
    let bad = entries.iter().find(|e| e["request"] == "NOT A REQUEST");
    assert_eq!(bad.expect("line of the bad request")["status"], "400");
    // Nothing of the access log on stderr: it is not the application log.
    assert!(
        !lb.stderr.joined().contains("GET /two"),
        "access lines leaked into the application log"
    );
}

#[test]
fn json_lines_load_with_json_loads() {
    let a = spawn_backend();
    let file = temp_log();
    let lb = spawn_balancer(&logging(&a, "json", &file), &[]);
    let sent = send_mix(lb.port);
    wait_lines(&file.path, sent.len());
    let entries = python_parse(PARSE_JSON, &file.path);
    assert_eq!(entries.len(), sent.len(), "{entries:?}");
    for (request, status, body_len) in &sent {
        let e = entries
            .iter()
            .find(|e| e["request"] == *request)
            .unwrap_or_else(|| panic!("no entry for {request}: {entries:?}"));
        assert_eq!(e["remote_addr"], "127.0.0.1", "{e}");
        assert_eq!(e["status"], *status, "{e}");
        assert_eq!(e["body_bytes_sent"], *body_len, "{e}");
        assert_eq!(e["retries"], 0, "{e}");
        let t = e["request_time"].as_f64().expect("request_time");
        assert!((0.0..5.0).contains(&t), "{e}");
        let id = e["request_id"].as_str().expect("request_id");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{e}"
        );
        if *status == 400 {
            assert!(e["upstream_addr"].is_null(), "{e}");
            assert!(e["upstream_status"].is_null(), "{e}");
            assert!(e["upstream_response_time"].is_null(), "{e}");
        } else {
            assert_eq!(e["upstream_addr"], a.addr(), "{e}");
            assert_eq!(e["upstream_status"], *status, "{e}");
            let u = e["upstream_response_time"].as_f64().expect("upstream time");
            assert!(u <= t, "upstream time within request time: {e}");
        }
    }
    let three = entries
        .iter()
        .find(|e| e["request"] == "GET /three HTTP/1.1")
        .expect("entry of /three");
    assert_eq!(three["http_referer"], "http://ref.example/b");
    assert_eq!(three["http_user_agent"], "curl/8.5.0");
    let one = entries
        .iter()
        .find(|e| e["request"] == "GET /one?x=1 HTTP/1.0")
        .expect("entry of /one");
    assert!(one["http_referer"].is_null() && one["http_user_agent"].is_null());
    let mut ids: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), entries.len(), "request ids repeat");
}

#[test]
fn body_bytes_of_a_chunked_response_leave_the_head_out() {
    // The relay reuses its output buffer to re-chunk a chunked body, so the
    // head's size must be recorded when the head is sent, not read back
    // from that buffer afterwards (it used to count the head as body).
    let a = spawn_backend();
    let file = temp_log();
    let cfg = logging(&a, "custom", &file).with("access_log_format", "'$status $body_bytes_sent'");
    let lb = spawn_balancer(&cfg, &[]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", lb.port)).unwrap();
    s.write_all(b"GET /chunked?bytes=5000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut wire = Vec::new();
    s.read_to_end(&mut wire).unwrap();
    let head = find(&wire, b"\r\n\r\n").expect("a head") + 4;
    assert!(
        String::from_utf8_lossy(&wire[..head])
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{:?}",
        String::from_utf8_lossy(&wire[..head])
    );
    let lines = wait_lines(&file.path, 1);
    assert_eq!(lines[0], format!("200 {}", wire.len() - head), "{lines:?}");
}

#[test]
fn custom_template_uses_nginx_variables() {
    let a = spawn_backend();
    let file = temp_log();
    let cfg = logging(&a, "custom", &file).with(
        "access_log_format",
        r#"'$request_id $status "$request" $upstream_addr $upstream_status $body_bytes_sent $time_iso8601'"#,
    );
    let lb = spawn_balancer(&cfg, &[]);
    let r = http_get(lb.port, "/status/404");
    assert_eq!(r.status, 404);
    let lines = wait_lines(&file.path, 1);
    let f: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(f.len(), 9, "{lines:?}");
    assert_eq!(f[0].len(), 32, "{lines:?}");
    assert_eq!(f[1], "404");
    assert_eq!(f[2..5].join(" "), "\"GET /status/404 HTTP/1.1\"");
    assert_eq!(f[5], a.addr());
    assert_eq!(f[6], "404");
    assert_eq!(f[7], r.body.len().to_string());
    assert!(f[8].len() == 25 && f[8].contains('T'), "{lines:?}");
}

#[test]
fn unknown_template_variable_is_a_config_error_naming_the_key() {
    let cfg = write_temp_file(
        "servers = [\"127.0.0.1:9\"]\naccess_log = \"custom\"\naccess_log_format = \"$status $upstream_connect_time\"\n",
        ".toml",
    );
    let r = run_balancer_to_exit(
        &["--check".as_ref(), "-f".as_ref(), cfg.path.as_os_str()],
        Duration::from_secs(10),
    );
    assert_eq!(r.status.code(), Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("`access_log_format`") && r.stderr.contains("$upstream_connect_time"),
        "{}",
        r.stderr
    );
}

#[test]
fn default_sink_is_stdout_with_raw_lines() {
    let a = spawn_backend();
    let cfg = Config::for_backends(std::slice::from_ref(&a)).with("access_log", "\"combined\"");
    let lb = spawn_balancer(&cfg, &[]);
    let r = http_get(lb.port, "/stdout-check");
    assert_eq!(r.status, 404);
    let line = poll_until(WAIT, || {
        lb.stdout
            .snapshot()
            .into_iter()
            .find(|l| l.contains("/stdout-check"))
    })
    .unwrap_or_else(|| panic!("no access line on stdout: {:?}", lb.stdout.snapshot()));
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    let tail = format!(
        "\"GET /stdout-check HTTP/1.1\" 404 {} \"-\" \"-\"",
        r.body.len()
    );
    assert!(line.ends_with(&tail), "{line}");
}

#[test]
fn off_by_default() {
    let a = spawn_backend();
    let lb = spawn_balancer(&Config::for_backends(std::slice::from_ref(&a)), &[]);
    for _ in 0..3 {
        assert_eq!(http_get(lb.port, "/").status, 200);
    }
    // Lines would be flushed within 100 ms; wait several intervals.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lb.stdout.snapshot().is_empty(),
        "{:?}",
        lb.stdout.snapshot()
    );
}

#[test]
fn sigusr1_reopens_the_file_after_logrotate_moved_it() {
    let a = spawn_backend();
    let file = temp_log();
    let lb = spawn_balancer(&logging(&a, "combined", &file), &[]);
    assert_eq!(http_get(lb.port, "/before").status, 404);
    wait_lines(&file.path, 1);

    // logrotate: rename, then signal. Until the signal, lines follow the
    // open file to its new name.
    let rotated = TempFile {
        path: file.path.with_extension("log.1"),
    };
    std::fs::rename(&file.path, &rotated.path).expect("rename");
    assert_eq!(http_get(lb.port, "/moved").status, 404);
    wait_lines(&rotated.path, 2);
    lb.guard.signal("USR1");
    poll_until(WAIT, || {
        lb.stderr
            .joined()
            .contains("access log reopened")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no reopen logged:\n{}", lb.stderr.joined()));
    assert_eq!(http_get(lb.port, "/after").status, 404);
    let fresh = wait_lines(&file.path, 1);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].contains("\"GET /after HTTP/1.1\""), "{fresh:?}");
    let old = lines_of(&rotated.path);
    assert!(
        old.len() == 2 && old[0].contains("/before") && old[1].contains("/moved"),
        "{old:?}"
    );
}

#[test]
fn one_worker_logs_in_request_order() {
    let a = spawn_backend();
    let file = temp_log();
    let lb = spawn_balancer(&logging(&a, "combined", &file).with("workers", "1"), &[]);
    let mut c = lb.connect();
    for i in 0..40 {
        assert_eq!(c.get(&format!("/order/{i}")).status, 404);
    }
    let lines = wait_lines(&file.path, 40);
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.contains(&format!("\"GET /order/{i} HTTP/1.1\"")),
            "{lines:?}"
        );
    }
}
