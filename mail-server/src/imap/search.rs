//! SEARCH (RFC 3501 §6.4.4): each key tested against one message. Flags, sizes, dates and
//! numbers come from what the session and the store's index know; header and text keys read
//! the message (case-insensitive substring, as the RFC asks).

use std::cell::OnceCell;

use imap_next::imap_types::core::AString;
use imap_next::imap_types::datetime::NaiveDate;
use imap_next::imap_types::search::SearchKey;
use imap_next::imap_types::sequence::SequenceSet;

use super::sequence;
use crate::store::Summary;

/// One message as SEARCH sees it. What text keys need (the parsed message, the lower-cased
/// bytes and body text) is worked out once per message, however many keys ask.
#[derive(Debug)]
pub struct Candidate<'a> {
    pub seq: u32,
    pub uid: u32,
    pub flags: &'a str,
    pub recent: bool,
    pub summary: &'a Summary,
    /// The message's bytes, when a key needs them (see [`needs_bytes`]); empty otherwise.
    raw: &'a [u8],
    parsed: OnceCell<Option<mail_parser::Message<'a>>>,
    raw_lower: OnceCell<String>,
    body_lower: OnceCell<String>,
}

impl<'a> Candidate<'a> {
    pub fn new(seq: u32, uid: u32, flags: &'a str, recent: bool, summary: &'a Summary) -> Self {
        Self {
            seq,
            uid,
            flags,
            recent,
            summary,
            raw: summary.raw.as_deref().unwrap_or_default(),
            parsed: OnceCell::new(),
            raw_lower: OnceCell::new(),
            body_lower: OnceCell::new(),
        }
    }

    fn parsed(&self) -> Option<&mail_parser::Message<'a>> {
        self.parsed
            .get_or_init(|| super::structure::parse(self.raw))
            .as_ref()
    }

    fn raw_lower(&self) -> &str {
        self.raw_lower
            .get_or_init(|| String::from_utf8_lossy(self.raw).to_lowercase())
    }

    /// The decoded text and HTML bodies, lower-cased.
    fn body_lower(&self) -> &str {
        self.body_lower.get_or_init(|| {
            let Some(message) = self.parsed() else {
                return self.raw_lower().to_owned();
            };
            let mut text = String::new();
            for i in 0..message.text_body.len() {
                if let Some(body) = message.body_text(i) {
                    text.push_str(&body.to_lowercase());
                    text.push('\n');
                }
            }
            for i in 0..message.html_body.len() {
                if let Some(body) = message.body_html(i) {
                    text.push_str(&body.to_lowercase());
                    text.push('\n');
                }
            }
            text
        })
    }
}

/// The mailbox's largest sequence number and UID, for `*`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub last_seq: u32,
    pub last_uid: u32,
}

/// Whether any key reads headers or text.
pub fn needs_bytes(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::And(keys) => keys.as_ref().iter().any(needs_bytes),
        SearchKey::Not(key) => needs_bytes(key),
        SearchKey::Or(a, b) => needs_bytes(a) || needs_bytes(b),
        SearchKey::Bcc(_)
        | SearchKey::Body(_)
        | SearchKey::Cc(_)
        | SearchKey::From(_)
        | SearchKey::Header(..)
        | SearchKey::Subject(_)
        | SearchKey::Text(_)
        | SearchKey::To(_) => true,
        _ => false,
    }
}

fn has_flag(flags: &str, flag: &str) -> bool {
    flags.split(' ').any(|f| f.eq_ignore_ascii_case(flag))
}

fn day(date: &NaiveDate) -> i64 {
    use chrono::Datelike as _;
    // Days since 1970-01-01.
    i64::from(date.as_ref().num_days_from_ce()) - 719_163
}

fn day_of(unix: i64) -> i64 {
    unix.div_euclid(86_400)
}

fn lower(text: &AString<'_>) -> String {
    String::from_utf8_lossy(text.as_ref()).to_lowercase()
}

/// The unfolded values of the header `name` in the message's top-level header.
fn header_values(raw: &[u8], name: &str) -> Vec<String> {
    let header_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(raw.len());
    let mut values = Vec::new();
    let mut current: Option<String> = None;
    for line in raw[..header_end].split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(value) = current.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some(value) = current.take() {
            values.push(value);
        }
        if let Some((field, value)) = line.split_once(':')
            && field.trim().eq_ignore_ascii_case(name)
        {
            current = Some(value.trim().to_owned());
        }
    }
    values.extend(current);
    values
}

/// Header values as a reader sees them: raw, and decoded by mail-parser (so `=?utf-8?…?=`
/// words match what they say).
fn header_matches(candidate: &Candidate<'_>, name: &str, needle: &str) -> bool {
    let raw_values = header_values(candidate.raw, name);
    if raw_values
        .iter()
        .any(|value| value.to_lowercase().contains(needle))
    {
        return true;
    }
    if raw_values.is_empty() {
        return false;
    }
    let Some(message) = candidate.parsed() else {
        return false;
    };
    message
        .header_values(name)
        .filter_map(|value| match value {
            mail_parser::HeaderValue::Text(text) => Some(text.to_string()),
            mail_parser::HeaderValue::TextList(list) => Some(list.join(" ")),
            mail_parser::HeaderValue::Address(address) => Some(
                address
                    .iter()
                    .map(|a| {
                        format!(
                            "{} {}",
                            a.name.as_deref().unwrap_or_default(),
                            a.address.as_deref().unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            _ => None,
        })
        .any(|value| value.to_lowercase().contains(needle))
}

fn in_set(set: &SequenceSet, value: u32, last: u32) -> bool {
    sequence::contains(set, value, last)
}

/// Whether `candidate` matches `key`.
pub fn matches(key: &SearchKey<'_>, candidate: &Candidate<'_>, bounds: Bounds) -> bool {
    let summary = candidate.summary;
    match key {
        SearchKey::And(keys) => keys
            .as_ref()
            .iter()
            .all(|key| matches(key, candidate, bounds)),
        SearchKey::SequenceSet(set) => in_set(set, candidate.seq, bounds.last_seq),
        SearchKey::Uid(set) => in_set(set, candidate.uid, bounds.last_uid),
        SearchKey::All => true,
        SearchKey::Answered => has_flag(candidate.flags, "\\Answered"),
        SearchKey::Deleted => has_flag(candidate.flags, "\\Deleted"),
        SearchKey::Draft => has_flag(candidate.flags, "\\Draft"),
        SearchKey::Flagged => has_flag(candidate.flags, "\\Flagged"),
        SearchKey::Seen => has_flag(candidate.flags, "\\Seen"),
        SearchKey::Unanswered => !has_flag(candidate.flags, "\\Answered"),
        SearchKey::Undeleted => !has_flag(candidate.flags, "\\Deleted"),
        SearchKey::Undraft => !has_flag(candidate.flags, "\\Draft"),
        SearchKey::Unflagged => !has_flag(candidate.flags, "\\Flagged"),
        SearchKey::Unseen => !has_flag(candidate.flags, "\\Seen"),
        SearchKey::Keyword(atom) => has_flag(candidate.flags, atom.as_ref()),
        SearchKey::Unkeyword(atom) => !has_flag(candidate.flags, atom.as_ref()),
        SearchKey::Recent => candidate.recent,
        SearchKey::New => candidate.recent && !has_flag(candidate.flags, "\\Seen"),
        SearchKey::Old => !candidate.recent,
        SearchKey::Larger(size) => summary.size > *size,
        SearchKey::Smaller(size) => summary.size < *size,
        SearchKey::Before(date) => day_of(summary.internal_date) < day(date),
        SearchKey::On(date) => day_of(summary.internal_date) == day(date),
        SearchKey::Since(date) => day_of(summary.internal_date) >= day(date),
        SearchKey::SentBefore(date) => summary.date.is_some_and(|d| day_of(d) < day(date)),
        SearchKey::SentOn(date) => summary.date.is_some_and(|d| day_of(d) == day(date)),
        SearchKey::SentSince(date) => summary.date.is_some_and(|d| day_of(d) >= day(date)),
        SearchKey::Not(key) => !matches(key, candidate, bounds),
        SearchKey::Or(a, b) => matches(a, candidate, bounds) || matches(b, candidate, bounds),
        SearchKey::From(text) => header_matches(candidate, "From", &lower(text)),
        SearchKey::To(text) => header_matches(candidate, "To", &lower(text)),
        SearchKey::Cc(text) => header_matches(candidate, "Cc", &lower(text)),
        SearchKey::Bcc(text) => header_matches(candidate, "Bcc", &lower(text)),
        SearchKey::Subject(text) => header_matches(candidate, "Subject", &lower(text)),
        SearchKey::Header(name, text) => {
            let name = String::from_utf8_lossy(name.as_ref()).into_owned();
            let needle = lower(text);
            if needle.is_empty() {
                !header_values(candidate.raw, &name).is_empty()
            } else {
                header_matches(candidate, &name, &needle)
            }
        }
        SearchKey::Body(text) => candidate.body_lower().contains(&lower(text)),
        SearchKey::Text(text) => {
            let needle = lower(text);
            candidate.raw_lower().contains(&needle) || candidate.body_lower().contains(&needle)
        }
        // Extensions not advertised.
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(size: u32, internal_date: i64) -> Summary {
        Summary {
            uid: 1,
            internal_date,
            size,
            from: None,
            to: None,
            subject: None,
            date: Some(internal_date),
            has_attachments: false,
            raw: None,
        }
    }

    #[test]
    fn keys_combine() {
        let raw = b"From: Ann <ann@example.test>\r\nSubject: Lunch =?utf-8?q?caf=C3=A9?=\r\n\r\nSee you at noon\r\n";
        let mut s = summary(raw.len() as u32, 1_795_514_400); // 2026-11-24
        s.raw = Some(raw.to_vec());
        let candidate = Candidate::new(2, 7, "\\Seen $work", false, &s);
        let bounds = Bounds {
            last_seq: 3,
            last_uid: 9,
        };
        let key = |text: &str| -> SearchKey<'static> {
            use imap_codec::decode::Decoder as _;
            use imap_next::imap_types::command::CommandBody;
            let command = format!("a SEARCH {text}\r\n");
            let (_, parsed) = imap_codec::CommandCodec::default()
                .decode_static(command.as_bytes())
                .unwrap_or_else(|err| panic!("{text}: {err:?}"));
            let CommandBody::Search { criteria, .. } = parsed.body else {
                panic!("search");
            };
            SearchKey::And(criteria)
        };
        let yes = |text: &str| assert!(matches(&key(text), &candidate, bounds), "{text}");
        let no = |text: &str| assert!(!matches(&key(text), &candidate, bounds), "{text}");
        yes("SEEN KEYWORD $work UNFLAGGED");
        no("UNSEEN");
        yes("FROM ann SUBJECT lunch");
        // Non-ASCII arrives as a literal; built directly here.
        let cafe = SearchKey::Subject(AString::try_from("café").expect("literal"));
        assert!(matches(&cafe, &candidate, bounds));
        no("FROM bob");
        yes("BODY noon");
        no("BODY midnight");
        yes("TEXT \"ann@example\"");
        yes("HEADER subject \"\"");
        no("HEADER x-spam \"\"");
        yes("OR FROM bob UID 7");
        yes("2 UID 1:*");
        no("3");
        yes("SINCE 24-Nov-2026 BEFORE 25-Nov-2026 ON 24-Nov-2026");
        no("BEFORE 24-Nov-2026");
        yes("SENTON 24-Nov-2026");
        yes(&format!("LARGER {} SMALLER 10000", raw.len() - 1));
        yes("NOT NEW OLD");
    }
}
