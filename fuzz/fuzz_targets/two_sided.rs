//! One exchange through the proxy's real HTTP functions: the input is split
//! into what a client sends and what the backend answers. The client part
//! goes through `request::parse` and the chunked re-encoder as `proxy.rs`
//! does; the backend part through `response::parse` and the body relay.
//! The bytes the backend would receive and the bytes the client would
//! receive are each parsed back strictly: one well-framed message each,
//! nothing more, same payload.
#![no_main]

use ekilibri_fuzz::{Rng, two_sided};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let rest = &data[2..];
    let cut = cut.min(rest.len());
    let mut rng = Rng::from_bytes(data);
    two_sided(&rest[..cut], &rest[cut..], &mut rng);
});
