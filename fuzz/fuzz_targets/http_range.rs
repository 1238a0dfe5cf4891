//! `Range` headers: never a panic; every range accepted lies inside the file, sorted and apart.
#![no_main]

use libfuzzer_sys::fuzz_target;
use web_server::static_files::range::{RangeRequest, parse};

fuzz_target!(|input: (&str, u32)| {
    let (header, len) = input;
    let len = u64::from(len);
    if let RangeRequest::Partial(ranges) = parse(header, len) {
        assert!(!ranges.is_empty());
        let mut previous_end = None;
        for range in ranges {
            assert!(range.start < range.end && range.end <= len);
            if let Some(end) = previous_end {
                assert!(range.start > end);
            }
            previous_end = Some(range.end);
        }
    }
});
