//! `Range: bytes=…` (RFC 9110 §14): one range, several (`multipart/byteranges`), or none
//! satisfiable (416).

use std::ops::Range;

/// More ranges than this are answered with the whole representation, so a request for
/// thousands of tiny overlapping ranges cannot multiply the work.
const MAX_RANGES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable `Range` header: send the whole representation (200).
    Full,
    /// 206 with these byte ranges (sorted, non-overlapping).
    Partial(Vec<Range<u64>>),
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
}

pub fn parse(header: &str, len: u64) -> RangeRequest {
    let Some((unit, specs)) = header.split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Full;
    }
    let mut ranges = Vec::new();
    let mut count = 0;
    for spec in specs.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        count += 1;
        let Some((first, last)) = spec.split_once('-') else {
            return RangeRequest::Full;
        };
        let (first, last) = (first.trim(), last.trim());
        let range = if first.is_empty() {
            // Suffix: the last N bytes.
            let Ok(suffix) = last.parse::<u64>() else {
                return RangeRequest::Full;
            };
            if suffix == 0 || len == 0 {
                continue;
            }
            len.saturating_sub(suffix)..len
        } else {
            let Ok(start) = first.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let end = if last.is_empty() {
                len
            } else {
                match last.parse::<u64>() {
                    Ok(last) if last >= start => last.saturating_add(1).min(len),
                    _ => return RangeRequest::Full,
                }
            };
            if start >= len {
                continue;
            }
            start..end
        };
        ranges.push(range);
    }
    if count == 0 {
        return RangeRequest::Full;
    }
    if count > MAX_RANGES {
        return RangeRequest::Full;
    }
    if ranges.is_empty() {
        return RangeRequest::Unsatisfiable;
    }
    // Coalesce overlapping or adjacent ranges.
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    RangeRequest::Partial(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn ranges() {
        assert_eq!(parse("bytes=0-9", 100), RangeRequest::Partial(vec![0..10]));
        assert_eq!(
            parse("bytes=90-", 100),
            RangeRequest::Partial(vec![90..100])
        );
        assert_eq!(parse("bytes=-5", 100), RangeRequest::Partial(vec![95..100]));
        assert_eq!(
            parse("bytes=95-200", 100),
            RangeRequest::Partial(vec![95..100])
        );
        assert_eq!(
            parse("bytes=0-1, 5-6", 100),
            RangeRequest::Partial(vec![0..2, 5..7])
        );
        assert_eq!(
            parse("bytes=0-5, 3-8", 100),
            RangeRequest::Partial(vec![0..9])
        );
        assert_eq!(parse("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(parse("bytes=5-1", 100), RangeRequest::Full);
        assert_eq!(parse("items=0-1", 100), RangeRequest::Full);
        assert_eq!(parse("bytes=abc", 100), RangeRequest::Full);
        let many = format!(
            "bytes={}",
            (0..40)
                .map(|i| format!("{i}-{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(parse(&many, 100), RangeRequest::Full);
    }
}
