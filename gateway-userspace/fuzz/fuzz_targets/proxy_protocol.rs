//! `proxy_protocol::parse` on arbitrary bytes: it never panics, a complete header lies within
//! the input and parses the same on its own, and every shorter start of it is incomplete (the
//! parser never refuses a header that is still arriving).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::proxy::proxy_protocol::{Parse, V1_MAX_LEN, V2_MAX_LEN, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(Parse::Complete { len, header }) = parse(data) else {
        return;
    };
    assert!(len <= data.len());
    match header.version {
        1 => assert!(len <= V1_MAX_LEN),
        2 => assert!(len <= V2_MAX_LEN),
        v => panic!("version {v}"),
    }
    assert_eq!(
        parse(&data[..len]).ok(),
        Some(Parse::Complete { len, header })
    );
    // Quadratic, so only for headers of ordinary size.
    if len <= 512 {
        for n in 0..len {
            assert_eq!(
                parse(&data[..n]).ok(),
                Some(Parse::Incomplete),
                "cut at {n}"
            );
        }
    }
});
