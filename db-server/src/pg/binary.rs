//! PostgreSQL's binary forms of the types SQLite keeps as text: `date`, `time`, `timestamp`
//! (and `timestamptz` parameters) and `numeric`. Clients such as tokio-postgres, sqlx and
//! asyncpg send parameters and ask for results in binary; these turn the two forms into each
//! other.
//!
//! Dates count days and timestamps microseconds from 2000-01-01 (PostgreSQL's epoch); times
//! count microseconds from midnight. A numeric is a sign, a weight and base-10000 digits.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Timelike as _};

fn epoch() -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2000, 1, 1)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .unwrap_or_default()
}

/// `HH:MM:SS` and, when not zero, `.ffffff` with trailing zeros dropped (as PostgreSQL
/// prints).
fn clock_text(time: NaiveTime) -> String {
    let micros = time.nanosecond() / 1_000;
    let mut text = time.format("%H:%M:%S").to_string();
    if micros != 0 {
        let fraction = format!("{micros:06}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text
}

/// A binary `date` (days since 2000-01-01) as `YYYY-MM-DD`.
pub fn date_text(days: i32) -> Option<String> {
    let date = epoch()
        .date()
        .checked_add_signed(TimeDelta::try_days(i64::from(days))?)?;
    Some(date.format("%Y-%m-%d").to_string())
}

/// A binary `time` (microseconds since midnight) as `HH:MM:SS[.ffffff]`.
pub fn time_text(micros: i64) -> Option<String> {
    if !(0..86_400_000_000).contains(&micros) {
        return None;
    }
    let time = NaiveTime::MIN + TimeDelta::microseconds(micros);
    Some(clock_text(time))
}

/// A binary `timestamp` (microseconds since 2000-01-01) as `YYYY-MM-DD HH:MM:SS[.ffffff]`.
pub fn timestamp_text(micros: i64) -> Option<String> {
    let at = epoch().checked_add_signed(TimeDelta::microseconds(micros))?;
    Some(format!(
        "{} {}",
        at.date().format("%Y-%m-%d"),
        clock_text(at.time())
    ))
}

/// A stored date or time as SQLite's date functions read it: text (`YYYY-MM-DD`, then
/// optionally ` HH:MM[:SS[.fff]]` with a space or a `T`, then optionally `Z` or a UTC offset,
/// which is ignored, as PostgreSQL's `timestamp` ignores it), or a time alone (`HH:MM[:SS]`,
/// on 2000-01-01).
pub fn moment_of_text(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    if let Some(time) = clock_of(text) {
        return Some(epoch().date().and_time(time));
    }
    let date = NaiveDate::parse_from_str(text.get(..10)?, "%Y-%m-%d").ok()?;
    let rest = text.get(10..)?;
    let rest = rest
        .strip_prefix(' ')
        .or_else(|| rest.strip_prefix('T'))
        .unwrap_or(rest);
    if rest.is_empty() {
        return date.and_hms_opt(0, 0, 0);
    }
    // The clock, then an offset: `Z`, or a sign after the clock's own characters.
    let clock_end = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    Some(date.and_time(clock_of(&rest[..clock_end])?))
}

/// `HH:MM[:SS[.fff]]`.
fn clock_of(text: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(text, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M"))
        .ok()
}

/// A moment stored as an integer: Unix seconds (SQLite's `unixepoch()`).
pub fn moment_of_unix_seconds(seconds: i64) -> Option<NaiveDateTime> {
    DateTime::from_timestamp(seconds, 0).map(|at| at.naive_utc())
}

/// A moment stored as a real: a Julian day number (SQLite's `julianday()`).
pub fn moment_of_julian_day(day: f64) -> Option<NaiveDateTime> {
    let micros = (day - 2_440_587.5) * 86_400_000_000.0;
    if !micros.is_finite() || micros.abs() > 1e18 {
        return None;
    }
    DateTime::from_timestamp_micros(micros.round() as i64).map(|at| at.naive_utc())
}

/// A moment as a binary `date`: days since 2000-01-01.
pub fn date_days(moment: NaiveDateTime) -> Option<i32> {
    i32::try_from((moment.date() - epoch().date()).num_days()).ok()
}

/// A moment as a binary `time`: microseconds since midnight.
pub fn time_micros(moment: NaiveDateTime) -> Option<i64> {
    (moment.time() - NaiveTime::MIN).num_microseconds()
}

/// A moment as a binary `timestamp`: microseconds since 2000-01-01.
pub fn timestamp_micros(moment: NaiveDateTime) -> Option<i64> {
    (moment - epoch()).num_microseconds()
}

/// The most digits a numeric is decoded to on either side of the point (PostgreSQL allows
/// more, which SQLite could not keep as a number anyway): bounds what a small Bind can cost.
const NUMERIC_MAX_DIGITS: usize = 1000;

const NUMERIC_POSITIVE: u16 = 0x0000;
const NUMERIC_NEGATIVE: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_INFINITY: u16 = 0xD000;
const NUMERIC_NEGATIVE_INFINITY: u16 = 0xF000;

/// A binary `numeric` as decimal text (`-12.50`, `NaN`, `Infinity`).
pub fn numeric_text(bytes: &[u8]) -> Option<String> {
    let word = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
    };
    let count = usize::from(word(0)?);
    let weight = i32::from(word(2)? as i16);
    let sign = word(4)?;
    let scale = usize::from(word(6)?);
    match sign {
        NUMERIC_NAN => return Some("NaN".to_owned()),
        NUMERIC_INFINITY => return Some("Infinity".to_owned()),
        NUMERIC_NEGATIVE_INFINITY => return Some("-Infinity".to_owned()),
        NUMERIC_POSITIVE | NUMERIC_NEGATIVE => {}
        _ => return None,
    }
    if bytes.len() != 8 + 2 * count
        || scale > NUMERIC_MAX_DIGITS
        || weight.unsigned_abs() as usize * 4 > NUMERIC_MAX_DIGITS
    {
        return None;
    }
    let mut digits = Vec::with_capacity(count);
    for index in 0..count {
        let digit = word(8 + 2 * index)?;
        if digit > 9999 {
            return None;
        }
        digits.push(digit);
    }
    // The base-10000 digit for 10000^power, zero outside those sent.
    let digit_at = |power: i32| -> u16 {
        usize::try_from(weight - power)
            .ok()
            .and_then(|index| digits.get(index).copied())
            .unwrap_or(0)
    };
    let mut text = String::new();
    // (A negative zero is zero, as PostgreSQL prints it.)
    if sign == NUMERIC_NEGATIVE && digits.iter().any(|&digit| digit != 0) {
        text.push('-');
    }
    if weight < 0 {
        text.push('0');
    } else {
        text.push_str(&digit_at(weight).to_string());
        for power in (0..weight).rev() {
            text.push_str(&format!("{:04}", digit_at(power)));
        }
    }
    if scale > 0 {
        let mut fraction = String::with_capacity(scale + 4);
        let mut power = -1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", digit_at(power)));
            power -= 1;
        }
        fraction.truncate(scale);
        text.push('.');
        text.push_str(&fraction);
    }
    Some(text)
}

/// Decimal text (`-12.50`, `1.5e3`, `NaN`, `Infinity`) as a binary `numeric`.
pub fn numeric_bytes(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let special = match text.to_ascii_lowercase().as_str() {
        "nan" => Some(NUMERIC_NAN),
        "infinity" | "+infinity" | "inf" => Some(NUMERIC_INFINITY),
        "-infinity" | "-inf" => Some(NUMERIC_NEGATIVE_INFINITY),
        _ => None,
    };
    if let Some(sign) = special {
        let mut out = Vec::with_capacity(8);
        for word in [0u16, 0, sign, 0] {
            out.extend_from_slice(&word.to_be_bytes());
        }
        return Some(out);
    }
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], unsigned[at + 1..].parse::<i32>().ok()?),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
        || exponent.unsigned_abs() > 1000
    {
        return None;
    }
    // All the digits, and how many of them come before the decimal point.
    let digits: Vec<u8> = whole
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    let point = whole.len() as i32 + exponent;
    if digits.len() > 2 * NUMERIC_MAX_DIGITS || point.unsigned_abs() as usize > NUMERIC_MAX_DIGITS {
        return None;
    }
    let scale = u16::try_from((digits.len() as i32 - point).max(0)).ok()?;
    // Align to groups of four around the point: pad the front so that `point` is a multiple
    // of four, and the back to a whole group.
    let front = (4 - point.rem_euclid(4)) % 4;
    let mut padded = vec![0u8; front as usize];
    padded.extend_from_slice(&digits);
    let point = point + front;
    let mut groups: Vec<u16> = padded
        .chunks(4)
        .map(|chunk| {
            let mut group = 0u16;
            for index in 0..4 {
                group = group * 10 + u16::from(chunk.get(index).copied().unwrap_or(0));
            }
            group
        })
        .collect();
    // The first group's power of 10000.
    let mut weight = point / 4 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    let sign = if negative && !groups.is_empty() {
        NUMERIC_NEGATIVE
    } else {
        NUMERIC_POSITIVE
    };
    let mut out = Vec::with_capacity(8 + 2 * groups.len());
    out.extend_from_slice(&u16::try_from(groups.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&(i16::try_from(weight).ok()?).to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&scale.to_be_bytes());
    for group in groups {
        out.extend_from_slice(&group.to_be_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_times_and_timestamps_both_ways() {
        let moment = |text: &str| moment_of_text(text).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(date_text(0).as_deref(), Some("2000-01-01"));
        assert_eq!(date_text(-1).as_deref(), Some("1999-12-31"));
        assert_eq!(date_days(moment("2024-02-29")), Some(8825));
        assert_eq!(date_text(8825).as_deref(), Some("2024-02-29"));
        assert_eq!(date_days(moment("2024-02-29 10:00:00")), Some(8825));
        assert_eq!(date_days(moment("1999-12-31")), Some(-1));

        assert_eq!(time_text(0).as_deref(), Some("00:00:00"));
        assert_eq!(time_text(45_296_500_000).as_deref(), Some("12:34:56.5"));
        assert_eq!(time_micros(moment("12:34:56.5")), Some(45_296_500_000));
        assert_eq!(time_micros(moment("12:34")), Some(45_240_000_000));
        assert_eq!(
            time_micros(moment("2024-02-29 12:34")),
            Some(45_240_000_000)
        );
        assert_eq!(time_text(86_400_000_000), None);

        assert_eq!(timestamp_text(0).as_deref(), Some("2000-01-01 00:00:00"));
        let micros = timestamp_micros(moment("2024-02-29 13:14:15.123456")).expect("micros");
        assert_eq!(
            timestamp_text(micros).as_deref(),
            Some("2024-02-29 13:14:15.123456")
        );
        for same in [
            "2024-02-29T13:14:15.123456",
            "2024-02-29 13:14:15.123456+02:00",
            "2024-02-29T13:14:15.123456Z",
            "2024-02-29 13:14:15.123456-0500",
        ] {
            assert_eq!(
                timestamp_micros(moment(same)),
                Some(micros),
                "{same}: the offset is ignored, as by PostgreSQL's timestamp"
            );
        }
        assert_eq!(
            timestamp_micros(moment("2000-01-02")),
            Some(86_400_000_000),
            "a date alone is its midnight"
        );
        assert_eq!(
            timestamp_text(-1).as_deref(),
            Some("1999-12-31 23:59:59.999999")
        );
        for bad in [
            "not a time",
            "2024-2-9",
            "yesterday",
            "",
            "2024-02-29 25:00",
        ] {
            assert_eq!(moment_of_text(bad), None, "{bad:?}");
        }

        // As SQLite's unixepoch() and julianday() store them.
        let noon = moment("2024-02-29 12:00:00");
        assert_eq!(moment_of_unix_seconds(1_709_208_000), Some(noon));
        assert_eq!(moment_of_julian_day(2_460_370.0), Some(noon));
        assert_eq!(moment_of_julian_day(f64::NAN), None);
    }

    #[test]
    fn numerics_both_ways() {
        for (text, canonical) in [
            ("0", "0"),
            ("1", "1"),
            ("-1", "-1"),
            ("12345.678", "12345.678"),
            ("-0.0001", "-0.0001"),
            ("0.50", "0.50"),
            ("10000", "10000"),
            ("100000000.000000001", "100000000.000000001"),
            ("1.5e3", "1500"),
            ("2.5E-3", "0.0025"),
            ("-0", "0"),
            ("NaN", "NaN"),
            ("Infinity", "Infinity"),
            ("-Infinity", "-Infinity"),
        ] {
            let bytes = numeric_bytes(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(numeric_text(&bytes).as_deref(), Some(canonical), "{text}");
        }
        // 12345.678 in PostgreSQL's own form: digits 1, 2345, 6780; weight 1; scale 3.
        assert_eq!(
            numeric_bytes("12345.678"),
            Some(vec![0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x7c])
        );
        for bad in ["", "-", "1.2.3", "12a", "e5", "1e99999"] {
            assert_eq!(numeric_bytes(bad), None, "{bad:?}");
        }
        assert_eq!(numeric_text(&[0, 1, 0, 0, 0, 0, 0, 0]), None, "too short");
        assert_eq!(
            numeric_text(&[0, 0, 0, 0, 0x40, 0, 0, 2]).as_deref(),
            Some("0.00"),
            "a negative zero"
        );
        assert_eq!(
            numeric_text(&[0, 1, 0x7f, 0xff, 0, 0, 0xff, 0xff, 0, 1]),
            None,
            "a weight and scale that would decode to megabytes"
        );
        assert_eq!(numeric_bytes(&"9".repeat(70_000)), None, "too many digits");
        assert_eq!(
            numeric_text(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]),
            None,
            "digit 10000"
        );
    }
}
