//! Conditional requests (RFC 9110 §13): `If-Match`, `If-Unmodified-Since`, `If-None-Match`,
//! `If-Modified-Since` and `If-Range`, evaluated in the order the RFC gives.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;
use axum::http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Proceed,
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

pub fn evaluate(headers: &HeaderMap, etag: &str, modified: SystemTime) -> Precondition {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(if_match) = text(IF_MATCH) {
        if !list_matches(if_match, etag, true) {
            return Precondition::Failed;
        }
    } else if let Some(date) = text(IF_UNMODIFIED_SINCE).and_then(parse_date)
        && seconds(modified) > seconds(date)
    {
        return Precondition::Failed;
    }
    if let Some(if_none_match) = text(IF_NONE_MATCH) {
        if list_matches(if_none_match, etag, false) {
            return Precondition::NotModified;
        }
    } else if let Some(date) = text(IF_MODIFIED_SINCE).and_then(parse_date)
        && seconds(modified) <= seconds(date)
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// Whether a `Range` may be honoured: without `If-Range`, or when it names the current
/// representation (strong ETag match, or exactly its modification date).
pub fn if_range_allows(headers: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    let Some(value) = headers.get(IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        return !value.starts_with("W/") && value == etag;
    }
    parse_date(value).is_some_and(|date| seconds(date) == seconds(modified))
}

fn list_matches(list: &str, etag: &str, strong: bool) -> bool {
    let ours = etag.trim_start_matches("W/");
    list.split(',').map(str::trim).any(|candidate| {
        if candidate == "*" {
            return true;
        }
        if strong {
            !candidate.starts_with("W/") && candidate == etag
        } else {
            candidate.trim_start_matches("W/") == ours
        }
    })
}

fn parse_date(text: &str) -> Option<SystemTime> {
    httpdate::parse_http_date(text.trim()).ok()
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn rfc_order_and_weak_comparison() {
        let etag = "\"abc\"";
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(t);
        assert_eq!(
            evaluate(&headers(&[("if-none-match", "W/\"abc\"")]), etag, t),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&headers(&[("if-none-match", "\"x\", \"abc\"")]), etag, t),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&headers(&[("if-none-match", "\"x\"")]), etag, t),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate(&headers(&[("if-modified-since", &date)]), etag, t),
            Precondition::NotModified
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            evaluate(
                &headers(&[("if-none-match", "\"x\""), ("if-modified-since", &date)]),
                etag,
                t
            ),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate(&headers(&[("if-match", "W/\"abc\"")]), etag, t),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&headers(&[("if-match", "\"abc\"")]), etag, t),
            Precondition::Proceed
        );
        let earlier = httpdate::fmt_http_date(t - Duration::from_secs(10));
        assert_eq!(
            evaluate(&headers(&[("if-unmodified-since", &earlier)]), etag, t),
            Precondition::Failed
        );
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(if_range_allows(
            &headers(&[("if-range", "\"abc\"")]),
            "\"abc\"",
            t
        ));
        assert!(!if_range_allows(
            &headers(&[("if-range", "W/\"abc\"")]),
            "\"abc\"",
            t
        ));
        assert!(!if_range_allows(
            &headers(&[("if-range", "\"old\"")]),
            "\"abc\"",
            t
        ));
        assert!(if_range_allows(
            &headers(&[("if-range", &httpdate::fmt_http_date(t))]),
            "\"abc\"",
            t
        ));
    }
}
