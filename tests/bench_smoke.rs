//! Smoke test of the benchmark harness (`tools/bench/run --smoke`).
//!
//! Runs the whole harness for about half a minute against every contender
//! (direct, ekilibri, nginx, haproxy, haproxy-tcp) with the binaries cargo built
//! for this test run, then checks that it wrote `results.json`, `report.md` and
//! `chart.svg`, and that every contender served requests without socket errors.
//! It fails when the harness rots: a renamed flag, a config nginx or HAProxy
//! rejects, a broken wrk script, a load generator that stops parsing responses.
//!
//! Needs python3, nginx, haproxy and wrk (the harness apt-get installs missing
//! ones when it can). Only 127.0.0.1 is used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const CONTENDERS: [&str; 5] = ["direct", "ekilibri", "nginx", "haproxy", "haproxy-tcp"];
/// Generous bound on the harness run (it normally takes about 30 s).
const RUN_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn bench_harness_smoke() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The three binaries cargo built for this test run (same profile as the test).
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ekilibri"))
        .parent()
        .expect("binary has a parent directory")
        .to_path_buf();
    for exe in [
        env!("CARGO_BIN_EXE_ekilibri-backend"),
        env!("CARGO_BIN_EXE_ekilibri-loadgen"),
    ] {
        assert_eq!(Path::new(exe).parent(), Some(bin_dir.as_path()));
    }
    let out = temp_dir();

    let mut child = Command::new(repo.join("tools/bench/run"))
        .arg("--smoke")
        .arg("--no-build")
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&out)
        .current_dir(repo)
        .stdin(Stdio::null())
        .spawn()
        .expect("start tools/bench/run");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the harness") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            // SIGTERM lets the harness stop nginx/haproxy/backends it started.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            std::thread::sleep(Duration::from_secs(15));
            let _ = child.kill();
            let _ = child.wait();
            panic!("tools/bench/run --smoke ran longer than {RUN_LIMIT:?} (output in {out:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "tools/bench/run --smoke failed with {status} (output in {out:?})"
    );

    for file in ["results.json", "report.md", "chart.svg"] {
        let len = std::fs::metadata(out.join(file))
            .unwrap_or_else(|e| panic!("{file} missing in {out:?}: {e}"))
            .len();
        assert!(len > 0, "{file} is empty");
    }
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline"), "chart.svg has no data series");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();

    let text = std::fs::read_to_string(out.join("results.json")).unwrap();
    let results = json::parse(&text).expect("results.json is valid JSON");
    let runs = results
        .get("runs")
        .and_then(|r| r.as_array())
        .expect("runs");
    assert!(!runs.is_empty(), "no measurements in results.json");
    for contender in CONTENDERS {
        let total = results
            .get("totals")
            .and_then(|t| t.get(contender))
            .unwrap_or_else(|| panic!("no totals for {contender}"));
        let requests = total.get("requests").and_then(|v| v.as_f64()).unwrap();
        let socket_errors = total.get("socket_errors").and_then(|v| v.as_f64()).unwrap();
        let non_2xx = total.get("non_2xx").and_then(|v| v.as_f64()).unwrap();
        assert!(requests > 0.0, "{contender} completed no requests");
        assert_eq!(socket_errors, 0.0, "{contender} had socket errors");
        assert_eq!(non_2xx, 0.0, "{contender} got non-2xx responses");
        assert!(
            report.contains(&format!("| {contender} |")),
            "report.md has no row for {contender}"
        );
        // Each measurement on its own, and the proxy metrics for real proxies.
        let mine: Vec<_> = runs
            .iter()
            .filter(|r| r.get("contender").and_then(|c| c.as_str()) == Some(contender))
            .collect();
        assert!(!mine.is_empty(), "no runs for {contender}");
        for r in mine {
            let workload = r.get("workload").and_then(|w| w.as_str()).unwrap();
            let num = |k: &str| r.get(k).and_then(|v| v.as_f64());
            assert!(
                num("requests").unwrap() > 0.0,
                "{contender}/{workload}: no requests"
            );
            assert!(num("rps").unwrap() > 0.0, "{contender}/{workload}: no rate");
            assert_eq!(
                num("socket_errors"),
                Some(0.0),
                "{contender}/{workload}: socket errors"
            );
            assert!(num("p99_us").is_some(), "{contender}/{workload}: no p99");
            if contender != "direct" {
                assert!(
                    num("proxy_cpu_s").is_some_and(|c| c > 0.0),
                    "{contender}/{workload}: proxy CPU time not measured"
                );
                assert!(
                    num("peak_rss_kb").is_some_and(|k| k > 0.0),
                    "{contender}/{workload}: proxy RSS not measured"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out);
}

fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!(
        "ekilibri-bench-smoke-{}-{nanos}",
        std::process::id()
    ))
}

/// A small JSON reader: enough for results.json (no serde_json in the tree).
mod json {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
        Arr(Vec<Value>),
        Obj(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn as_array(&self) -> Option<&[Value]> {
            match self {
                Value::Arr(a) => Some(a),
                _ => None,
            }
        }
        pub fn as_f64(&self) -> Option<f64> {
            match self {
                Value::Num(n) => Some(*n),
                _ => None,
            }
        }
        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::Str(s) => Some(s),
                _ => None,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
                self.i += 1;
            }
        }

        fn eat(&mut self, lit: &str) -> Result<(), String> {
            if self.s[self.i..].starts_with(lit.as_bytes()) {
                self.i += lit.len();
                Ok(())
            } else {
                Err(format!("expected {lit:?} at byte {}", self.i))
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            match self.s.get(self.i) {
                None => Err("unexpected end".into()),
                Some(b'n') => self.eat("null").map(|_| Value::Null),
                Some(b't') => self.eat("true").map(|_| Value::Bool(true)),
                Some(b'f') => self.eat("false").map(|_| Value::Bool(false)),
                Some(b'N') => self.eat("NaN").map(|_| Value::Num(f64::NAN)),
                Some(b'"') => self.string().map(Value::Str),
                Some(b'[') => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Ok(Value::Arr(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Value::Arr(items));
                            }
                            _ => return Err(format!("bad array at byte {}", self.i)),
                        }
                    }
                }
                Some(b'{') => {
                    self.i += 1;
                    let mut fields = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(Value::Obj(fields));
                    }
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.ws();
                        self.eat(":")?;
                        fields.push((key, self.value()?));
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Value::Obj(fields));
                            }
                            _ => return Err(format!("bad object at byte {}", self.i)),
                        }
                    }
                }
                Some(_) => self.number(),
            }
        }

        fn number(&mut self) -> Result<Value, String> {
            let start = self.i;
            while self.i < self.s.len()
                && matches!(
                    self.s[self.i],
                    b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                )
            {
                self.i += 1;
            }
            let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
            if t == "-" && self.eat("Infinity").is_ok() {
                return Ok(Value::Num(f64::NEG_INFINITY));
            }
            if t.is_empty() && self.eat("Infinity").is_ok() {
                return Ok(Value::Num(f64::INFINITY));
            }
            t.parse()
                .map(Value::Num)
                .map_err(|_| format!("bad number {t:?} at byte {start}"))
        }

        fn string(&mut self) -> Result<String, String> {
            self.eat("\"")?;
            let mut out = String::new();
            loop {
                let first = *self.s.get(self.i).ok_or("unterminated string")?;
                let width = match first {
                    0xF0..=0xFF => 4,
                    0xE0..=0xEF => 3,
                    0xC0..=0xDF => 2,
                    _ => 1,
                };
                let bytes = self
                    .s
                    .get(self.i..self.i + width)
                    .ok_or("truncated UTF-8")?;
                let c = std::str::from_utf8(bytes)
                    .map_err(|e| e.to_string())?
                    .chars()
                    .next()
                    .ok_or("empty")?;
                self.i += width;
                match c {
                    '"' => return Ok(out),
                    '\\' => {
                        let e = self.s.get(self.i).copied().ok_or("bad escape")?;
                        self.i += 1;
                        match e {
                            b'"' => out.push('"'),
                            b'\\' => out.push('\\'),
                            b'/' => out.push('/'),
                            b'b' => out.push('\u{8}'),
                            b'f' => out.push('\u{c}'),
                            b'n' => out.push('\n'),
                            b'r' => out.push('\r'),
                            b't' => out.push('\t'),
                            b'u' => {
                                let hex = std::str::from_utf8(&self.s[self.i..self.i + 4])
                                    .map_err(|e| e.to_string())?;
                                let mut code =
                                    u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                self.i += 4;
                                if (0xD800..0xDC00).contains(&code)
                                    && self.s[self.i..].starts_with(b"\\u")
                                {
                                    let lo = std::str::from_utf8(&self.s[self.i + 2..self.i + 6])
                                        .map_err(|e| e.to_string())?;
                                    let lo =
                                        u32::from_str_radix(lo, 16).map_err(|e| e.to_string())?;
                                    self.i += 6;
                                    code = 0x10000 + ((code - 0xD800) << 10) + (lo - 0xDC00);
                                }
                                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                            }
                            _ => return Err(format!("bad escape at byte {}", self.i)),
                        }
                    }
                    c => out.push(c),
                }
            }
        }
    }

    #[test]
    fn parses_nested_values() {
        let v = parse(r#"{"a": [1, -2.5e3, "x\"\u00e9", true, null], "b": {"c": NaN}}"#).unwrap();
        let a = v.get("a").unwrap().as_array().unwrap();
        assert_eq!(a[1].as_f64(), Some(-2500.0));
        assert_eq!(a[2].as_str(), Some("x\"é"));
        assert!(
            v.get("b")
                .unwrap()
                .get("c")
                .unwrap()
                .as_f64()
                .unwrap()
                .is_nan()
        );
        assert!(parse("[1,]").is_err());
    }
}
