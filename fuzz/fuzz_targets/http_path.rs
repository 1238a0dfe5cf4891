//! Request paths: never a panic, and nothing accepted may step outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use web_server::static_files::path::{normalize, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    if let Ok(site_path) = parse(raw) {
        let relative = &site_path.relative;
        assert!(!relative.starts_with('/'));
        assert!(!relative.contains(['\0', '\\']));
        if !relative.is_empty() {
            for segment in relative.split('/') {
                assert!(!segment.is_empty() && segment != "." && segment != "..");
                assert!(!segment.starts_with('.') || segment == ".well-known");
            }
        }
    }
    if let Ok(normal) = normalize(raw) {
        // One spelling per path: absolute, no empty, `.` or `..` segments.
        assert!(normal.starts_with('/'));
        let inner = normal.trim_start_matches('/').trim_end_matches('/');
        if !inner.is_empty() {
            assert!(inner.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
        }
    }
});
