//! `request::parse` on arbitrary bytes: never panics, and when it accepts a
//! head, the head it forwards is one strict HTTP/1.1 head (no bare LF, one
//! Host, one X-Forwarded-For, at most one of Content-Length /
//! Transfer-Encoding and matching the decision, no hop-by-hop fields) that
//! ekilibri itself would accept again.
#![no_main]

use ekilibri::http::request;
use ekilibri_fuzz::{FWD, MAX_HEAD, check_forwarded_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    match request::parse(data, MAX_HEAD, &FWD, &mut out) {
        Ok(Some(h)) => {
            check_forwarded_request(data, &h, &out);
        }
        Ok(None) => assert!(data.len() < MAX_HEAD, "a full buffer must be refused"),
        Err(e) => assert!(e.status().is_some(), "{e}: client errors have a status"),
    }
    // A small limit exercises the 431 path on the same input.
    let mut out = Vec::new();
    if let Ok(Some(h)) = request::parse(data, 256, &FWD, &mut out) {
        assert!(h.head_len <= 256);
    }
});
