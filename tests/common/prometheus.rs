//! A strict parser of the Prometheus text exposition format (0.0.4), for
//! the tests that scrape `/metrics` (`admin.rs`, `metrics_labels.rs`).
//! Included with `#[path]`, so test binaries that do not scrape do not
//! compile it.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed and validated exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name -> declared type.
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// Samples named `name` whose labels include every pair of `filter`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        filter: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && filter
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.matching(name, filter).map(|s| s.value).sum()
    }

    /// The value of the one sample matching; panics if there is not exactly one.
    #[track_caller]
    pub fn value(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.matching(name, filter).collect();
        assert_eq!(
            found.len(),
            1,
            "expected exactly one sample {name}{filter:?}, found {found:?}"
        );
        found[0].value
    }
}

fn valid_metric_name(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut cs = s.chars();
    !s.starts_with("__")
        && matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A sample value: a Go-style float or `+Inf`, `-Inf`, `NaN`.
pub fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E')) =>
        {
            s.parse::<f64>()
                .map_err(|e| format!("bad value {s:?}: {e}"))
        }
        _ => Err(format!("bad value {s:?}")),
    }
}

/// `name{label="value",...} value [timestamp]`
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| "no value after the metric name".to_string())?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let b = r.as_bytes();
        let mut i = 0;
        loop {
            if b.get(i) == Some(&b'}') {
                i += 1;
                break;
            }
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let lname = &r[start..i];
            if !valid_label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            if b.get(i) != Some(&b'=') || b.get(i + 1) != Some(&b'"') {
                return Err(format!("label {lname} is not followed by =\""));
            }
            i += 2;
            let mut value = String::new();
            loop {
                match b.get(i) {
                    None => return Err(format!("unterminated value of label {lname}")),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        match b.get(i + 1) {
                            Some(b'\\') => value.push('\\'),
                            Some(b'"') => value.push('"'),
                            Some(b'n') => value.push('\n'),
                            _ => return Err(format!("bad escape in label {lname}")),
                        }
                        i += 2;
                    }
                    Some(_) => {
                        let ch = r[i..].chars().next().unwrap();
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            if labels.insert(lname.to_string(), value).is_some() {
                return Err(format!("label {lname} given twice"));
            }
            match b.get(i) {
                Some(b',') => i += 1,
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(format!("expected , or }} after label {lname}")),
            }
        }
        rest = &r[i..];
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| "no single space before the value".to_string())?;
    let parts: Vec<&str> = rest.split(' ').collect();
    if parts.is_empty() || parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("expected `value [timestamp]`, got {rest:?}"));
    }
    let value = parse_value(parts[0])?;
    if let Some(ts) = parts.get(1) {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The family a sample belongs to (histogram samples carry a suffix).
fn family_of(name: &str, types: &HashMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            match types.get(base).map(String::as_str) {
                Some("histogram") => return Some(base.to_string()),
                Some("summary") if suffix != "_bucket" => return Some(base.to_string()),
                _ => {}
            }
        }
    }
    None
}

/// Parses the text format strictly: every sample line `name{labels} value`,
/// label values quoted with `\\`, `\"`, `\n` escapes, one `# HELP` and one
/// `# TYPE` per family before its samples, the samples of a family
/// contiguous, no duplicate series, counters finite and non-negative,
/// histogram buckets cumulative with increasing `le`, ending in `+Inf`
/// equal to `_count`, with a `_sum`.
pub fn parse_exposition(text: &str) -> Result<Exposition, String> {
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut exp = Exposition::default();
    let mut helps: HashSet<String> = HashSet::new();
    let mut with_samples: HashSet<String> = HashSet::new();
    let mut series: HashSet<(String, BTreeMap<String, String>)> = HashSet::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start_matches(' ').splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a plain comment
            }
            let name = parts.next().unwrap_or("");
            if !valid_metric_name(name) {
                return Err(at(format!("bad metric name in # {keyword}")));
            }
            if with_samples.contains(name) {
                return Err(at(format!("# {keyword} after samples of {name}")));
            }
            let rest = parts.next().unwrap_or("");
            if keyword == "HELP" {
                if !helps.insert(name.to_string()) {
                    return Err(at("second # HELP".into()));
                }
                let mut chars = rest.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                        return Err(at("bad escape in # HELP".into()));
                    }
                }
            } else {
                if !matches!(
                    rest,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    return Err(at(format!("unknown type {rest:?}")));
                }
                if exp
                    .types
                    .insert(name.to_string(), rest.to_string())
                    .is_some()
                {
                    return Err(at("second # TYPE".into()));
                }
            }
            continue;
        }
        let s = parse_sample(line).map_err(at)?;
        let family =
            family_of(&s.name, &exp.types).ok_or_else(|| at("no # TYPE before it".into()))?;
        if !helps.contains(&family) {
            return Err(at(format!("no # HELP for {family} before it")));
        }
        if current.as_deref() != Some(family.as_str()) {
            if !with_samples.insert(family.clone()) {
                return Err(at(format!("samples of {family} are not contiguous")));
            }
            current = Some(family.clone());
        }
        match exp.types[&family].as_str() {
            "counter" if !(s.value.is_finite() && s.value >= 0.0) => {
                return Err(at("a counter must be finite and >= 0".into()));
            }
            "histogram" => {
                let is_bucket = s.name.ends_with("_bucket");
                if is_bucket != s.labels.contains_key("le") {
                    return Err(at("`le` belongs on _bucket samples only".into()));
                }
                if s.name != format!("{family}_sum") && !s.value.is_finite() {
                    return Err(at("histogram counts must be finite".into()));
                }
            }
            _ => {}
        }
        if !series.insert((s.name.clone(), s.labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        exp.samples.push(s);
    }
    let histograms: Vec<String> = exp
        .types
        .iter()
        .filter(|(_, t)| t.as_str() == "histogram")
        .map(|(n, _)| n.clone())
        .collect();
    for h in histograms {
        check_histogram(&exp, &h)?;
    }
    Ok(exp)
}

fn check_histogram(exp: &Exposition, family: &str) -> Result<(), String> {
    let bucket = format!("{family}_bucket");
    // (labels without `le`, [(le, value)]) in order of appearance.
    type Group = (BTreeMap<String, String>, Vec<(f64, f64)>);
    let mut groups: Vec<Group> = Vec::new();
    for s in exp.samples.iter().filter(|s| s.name == bucket) {
        let mut key = s.labels.clone();
        let le = key.remove("le").unwrap();
        let le = parse_value(&le).map_err(|e| format!("{bucket}: le: {e}"))?;
        if le.is_nan() {
            return Err(format!("{bucket}: le is NaN"));
        }
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push((le, s.value)),
            None => groups.push((key, vec![(le, s.value)])),
        }
    }
    if groups.is_empty() {
        return Err(format!("histogram {family} has no buckets"));
    }
    for (key, buckets) in &groups {
        for w in buckets.windows(2) {
            if w[1].0 <= w[0].0 {
                return Err(format!("{bucket}{key:?}: le not increasing: {buckets:?}"));
            }
            if w[1].1 < w[0].1 {
                return Err(format!("{bucket}{key:?}: not cumulative: {buckets:?}"));
            }
        }
        let (last_le, last) = *buckets.last().unwrap();
        if last_le != f64::INFINITY {
            return Err(format!("{bucket}{key:?}: does not end in +Inf"));
        }
        let filter: Vec<(&str, &str)> = key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let count_name = format!("{family}_count");
        let counts: Vec<&Sample> = exp
            .samples
            .iter()
            .filter(|s| s.name == count_name && s.labels == *key)
            .collect();
        if counts.len() != 1 || counts[0].value != last {
            return Err(format!(
                "{family}{filter:?}: _count {counts:?} != +Inf bucket {last}"
            ));
        }
        let sum_name = format!("{family}_sum");
        if !exp
            .samples
            .iter()
            .any(|s| s.name == sum_name && s.labels == *key)
        {
            return Err(format!("{family}{filter:?}: no _sum"));
        }
    }
    Ok(())
}
