//! The chunked decoder on arbitrary bytes, in both modes, fed at arbitrary
//! split points: never panics, the outcome does not depend on the splits,
//! and whatever `Rechunk` emits is canonical and decodes to the same payload
//! as `Decode`.
#![no_main]

use ekilibri::http::chunked::Mode;
use ekilibri_fuzz::{Outcome, Rng, feed, strict_canonical_chunked};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::from_bytes(data);
    let whole_decode = feed(Mode::Decode, data, None);
    let whole_rechunk = feed(Mode::Rechunk, data, None);
    assert_eq!(whole_decode, feed(Mode::Decode, data, Some(&mut rng)));
    assert_eq!(whole_rechunk, feed(Mode::Rechunk, data, Some(&mut rng)));
    match (&whole_decode, &whole_rechunk) {
        (Outcome::Done(payload, l1), Outcome::Done(canonical, l2)) => {
            assert_eq!(l1, l2);
            let (p, n) = strict_canonical_chunked(canonical)
                .unwrap_or_else(|e| panic!("Rechunk output not canonical: {e}"));
            assert_eq!(n, canonical.len());
            assert_eq!(&p, payload);
            assert_eq!(
                feed(Mode::Rechunk, canonical, None),
                Outcome::Done(canonical.clone(), 0)
            );
        }
        (Outcome::Error(_), Outcome::Error(_)) => {}
        (Outcome::Incomplete(p), Outcome::Incomplete(c)) => {
            // The payload streamed so far is a prefix of what Rechunk sent.
            assert!(p.len() <= c.len());
        }
        (a, b) => panic!("modes disagree: {a:?} vs {b:?}"),
    }
});
