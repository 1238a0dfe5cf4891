//! `Accept-Encoding`: never a panic, no coding listed twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use web_server::static_files::encoding::acceptable;

fuzz_target!(|header: &str| {
    let codings = acceptable(Some(header));
    for (i, a) in codings.iter().enumerate() {
        assert!(!codings[i + 1..].contains(a));
    }
});
