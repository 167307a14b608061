//! `response::parse` on arbitrary bytes, for every kind of client (the
//! first byte picks HEAD or not, HTTP/1.0 or 1.1, keep-alive, upgrade):
//! never panics, and an accepted head is rewritten into one strict
//! HTTP/1.1 head whose framing is exactly what the proxy will relay.
#![no_main]

use ekilibri::http::response;
use ekilibri_fuzz::{MAX_HEAD, check_client_head, client_side};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let client = client_side(flags);
    let mut out = Vec::new();
    match response::parse(input, MAX_HEAD, client, &mut out) {
        Ok(Some(r)) => {
            check_client_head(client, input, &r, &out);
        }
        Ok(None) => assert!(input.len() < MAX_HEAD),
        Err(e) => assert_eq!(e.status(), Some(502), "{e}"),
    }
});
