//! A stored message as IMAP describes it (RFC 3501 §7.4.2): its ENVELOPE, its BODYSTRUCTURE,
//! and the bytes of `BODY[section]`. mail-parser finds the MIME parts; the bytes returned are
//! always the stored ones, never re-encoded. A `message/rfc822` part is parsed again from its
//! own bytes when a section or structure reaches inside it.

use std::num::NonZeroU32;

use imap_next::imap_types::body::{
    BasicFields, Body, BodyStructure, Disposition, Language, Location, MultiPartExtensionData,
    SinglePartExtensionData, SpecificFields,
};
use imap_next::imap_types::core::{AString, IString, NString, Vec1};
use imap_next::imap_types::envelope::{Address, Envelope};
use imap_next::imap_types::fetch::{Part, Section};
use mail_parser::{HeaderValue, Message, MessageParser, MessagePart, MimeHeaders, PartType};

/// Nested parts (multiparts and messages) are described this deep, no further: a message can
/// nest thousands of levels, and describing them would recurse as deep (a stack overflow).
const MAX_DEPTH: usize = 20;

pub fn parse(raw: &[u8]) -> Option<Message<'_>> {
    MessageParser::default().parse(raw)
}

/// A string for a response: NUL (which IMAP strings cannot carry) is dropped.
pub fn istring(text: &str) -> IString<'static> {
    let clean: String = text.chars().filter(|&c| c != '\0').collect();
    IString::try_from(clean).unwrap_or_else(|_| IString::try_from("").expect("empty is valid"))
}

fn nstring(text: Option<&str>) -> NString<'static> {
    match text {
        Some(text) => NString(Some(istring(text))),
        None => NString(None),
    }
}

/// Bytes for a response; NUL bytes become 0x80, as Dovecot does, since IMAP literals cannot
/// carry them.
pub fn nstring_bytes(bytes: &[u8]) -> NString<'static> {
    let clean: Vec<u8> = bytes
        .iter()
        .map(|&b| if b == 0 { 0x80 } else { b })
        .collect();
    NString::try_from(clean).unwrap_or(NString(None))
}

/// A header's value as written, unfolded (for ENVELOPE's date, subject and ids).
fn raw_header(message: &Message<'_>, name: &str) -> Option<String> {
    let value = message.header_raw(name)?;
    let unfolded = value
        .split(['\r', '\n'])
        .map(|line| line.trim_start_matches([' ', '\t']))
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(unfolded.trim().to_owned())
}

fn addresses(value: Option<&mail_parser::Address<'_>>) -> Vec<Address<'static>> {
    let Some(value) = value else {
        return Vec::new();
    };
    let one = |addr: &mail_parser::Addr<'_>| {
        let (mailbox, host) = match addr.address.as_deref() {
            Some(address) => match address.rsplit_once('@') {
                Some((local, domain)) => (Some(local.to_owned()), Some(domain.to_owned())),
                None => (Some(address.to_owned()), None),
            },
            None => (None, None),
        };
        Address {
            name: nstring(addr.name.as_deref()),
            adl: NString(None),
            mailbox: nstring(mailbox.as_deref()),
            host: nstring(host.as_deref()),
        }
    };
    match value {
        mail_parser::Address::List(list) => list.iter().map(one).collect(),
        mail_parser::Address::Group(groups) => {
            let mut out = Vec::new();
            for group in groups {
                match &group.name {
                    // RFC 3501: a group is a start marker (host NIL, mailbox = the group's
                    // name), its members, and an end marker (both NIL).
                    Some(name) => {
                        out.push(Address {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: nstring(Some(name)),
                            host: NString(None),
                        });
                        out.extend(group.addresses.iter().map(one));
                        out.push(Address {
                            name: NString(None),
                            adl: NString(None),
                            mailbox: NString(None),
                            host: NString(None),
                        });
                    }
                    None => out.extend(group.addresses.iter().map(one)),
                }
            }
            out
        }
    }
}

/// ENVELOPE: date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id.
pub fn envelope(message: &Message<'_>) -> Envelope<'static> {
    let from = addresses(message.from());
    let sender = match message.sender() {
        Some(sender) => addresses(Some(sender)),
        None => from.clone(),
    };
    let reply_to = match message.reply_to() {
        Some(reply_to) => addresses(Some(reply_to)),
        None => from.clone(),
    };
    Envelope {
        date: nstring(raw_header(message, "Date").as_deref()),
        subject: nstring(raw_header(message, "Subject").as_deref()),
        from,
        sender,
        reply_to,
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        bcc: addresses(message.bcc()),
        in_reply_to: nstring(raw_header(message, "In-Reply-To").as_deref()),
        message_id: nstring(raw_header(message, "Message-ID").as_deref()),
    }
}

fn part_bytes<'a>(message: &'a Message<'_>, part: &MessagePart<'_>) -> &'a [u8] {
    let raw = message.raw_message();
    let start = (part.offset_body as usize).min(raw.len());
    let end = (part.offset_end as usize).clamp(start, raw.len());
    &raw[start..end]
}

fn part_header_bytes<'a>(message: &'a Message<'_>, part: &MessagePart<'_>) -> &'a [u8] {
    let raw = message.raw_message();
    let start = (part.offset_header as usize).min(raw.len());
    let end = (part.offset_body as usize).clamp(start, raw.len());
    &raw[start..end]
}

fn is_message_rfc822(part: &MessagePart<'_>) -> bool {
    part.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("message")
            && ct.subtype().is_some_and(|s| {
                s.eq_ignore_ascii_case("rfc822") || s.eq_ignore_ascii_case("global")
            })
    })
}

fn children<'m>(message: &'m Message<'_>, part: &MessagePart<'_>) -> Vec<&'m MessagePart<'m>> {
    match &part.body {
        PartType::Multipart(ids) => ids
            .iter()
            .filter_map(|id| message.parts.get(*id as usize))
            .collect(),
        _ => Vec::new(),
    }
}

fn lines(bytes: &[u8]) -> u32 {
    let mut count = bytes.iter().filter(|&&b| b == b'\n').count();
    if bytes.last().is_some_and(|&b| b != b'\n') {
        count += 1;
    }
    u32::try_from(count).unwrap_or(u32::MAX)
}

fn parameters(
    attributes: Option<&[mail_parser::Attribute<'_>]>,
) -> Vec<(IString<'static>, IString<'static>)> {
    attributes
        .unwrap_or_default()
        .iter()
        .map(|attribute| (istring(&attribute.name), istring(&attribute.value)))
        .collect()
}

fn disposition(part: &MessagePart<'_>) -> Option<Disposition<'static>> {
    let disposition = part.content_disposition().map(|d| {
        (
            istring(&d.ctype().to_ascii_uppercase()),
            parameters(d.attributes()),
        )
    });
    let language: Vec<IString<'static>> = match part.content_language() {
        HeaderValue::Text(text) => vec![istring(text)],
        HeaderValue::TextList(list) => list.iter().map(|t| istring(t)).collect(),
        _ => Vec::new(),
    };
    Some(Disposition {
        disposition,
        tail: Some(Language {
            language,
            tail: Some(Location {
                location: nstring(part.content_location()),
                extensions: Vec::new(),
            }),
        }),
    })
}

/// BODYSTRUCTURE (with `extensions`) or BODY (without) of a whole message.
pub fn body_structure(message: &Message<'_>, extensions: bool) -> BodyStructure<'static> {
    match message.parts.first() {
        Some(root) => part_structure(message, root, extensions, 0),
        None => empty_text_part(),
    }
}

fn empty_text_part() -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: vec![(istring("CHARSET"), istring("US-ASCII"))],
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring("7BIT"),
                size: 0,
            },
            specific: SpecificFields::Text {
                subtype: istring("PLAIN"),
                number_of_lines: 0,
            },
        },
        extension_data: None,
    }
}

/// A part too deep to describe: opaque bytes.
fn opaque_part(size: usize) -> BodyStructure<'static> {
    BodyStructure::Single {
        body: Body {
            basic: BasicFields {
                parameter_list: Vec::new(),
                id: NString(None),
                description: NString(None),
                content_transfer_encoding: istring("7BIT"),
                size: u32::try_from(size).unwrap_or(u32::MAX),
            },
            specific: SpecificFields::Basic {
                r#type: istring("APPLICATION"),
                subtype: istring("OCTET-STREAM"),
            },
        },
        extension_data: None,
    }
}

fn part_structure(
    message: &Message<'_>,
    part: &MessagePart<'_>,
    extensions: bool,
    depth: usize,
) -> BodyStructure<'static> {
    if depth > MAX_DEPTH {
        return opaque_part(part_bytes(message, part).len());
    }
    let content_type = part.content_type();
    if let PartType::Multipart(_) = part.body {
        let bodies: Vec<BodyStructure<'static>> = children(message, part)
            .into_iter()
            .map(|child| part_structure(message, child, extensions, depth + 1))
            .collect();
        let subtype = content_type
            .and_then(|ct| ct.subtype())
            .unwrap_or("MIXED")
            .to_ascii_uppercase();
        let Ok(bodies) = Vec1::try_from(bodies) else {
            return empty_text_part();
        };
        return BodyStructure::Multi {
            bodies,
            subtype: istring(&subtype),
            extension_data: extensions.then(|| MultiPartExtensionData {
                parameter_list: parameters(content_type.and_then(|ct| ct.attributes())),
                tail: disposition(part),
            }),
        };
    }
    let bytes = part_bytes(message, part);
    let (kind, subtype) = match content_type {
        Some(ct) => (
            ct.ctype().to_ascii_uppercase(),
            ct.subtype().unwrap_or("PLAIN").to_ascii_uppercase(),
        ),
        None => ("TEXT".to_owned(), "PLAIN".to_owned()),
    };
    let mut parameter_list = parameters(content_type.and_then(|ct| ct.attributes()));
    if kind == "TEXT" && parameter_list.is_empty() {
        parameter_list.push((istring("CHARSET"), istring("US-ASCII")));
    }
    let basic = BasicFields {
        parameter_list,
        id: nstring(part.content_id().map(|id| format!("<{id}>")).as_deref()),
        description: nstring(part.content_description()),
        content_transfer_encoding: istring(
            &part
                .content_transfer_encoding()
                .unwrap_or("7BIT")
                .to_ascii_uppercase(),
        ),
        size: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
    };
    let specific = if kind == "TEXT" {
        SpecificFields::Text {
            subtype: istring(&subtype),
            number_of_lines: lines(bytes),
        }
    } else if is_message_rfc822(part) && depth < MAX_DEPTH {
        match parse(bytes) {
            Some(inner) => SpecificFields::Message {
                envelope: Box::new(envelope(&inner)),
                body_structure: Box::new(body_structure_at(&inner, extensions, depth + 1)),
                number_of_lines: lines(bytes),
            },
            None => SpecificFields::Basic {
                r#type: istring(&kind),
                subtype: istring(&subtype),
            },
        }
    } else {
        SpecificFields::Basic {
            r#type: istring(&kind),
            subtype: istring(&subtype),
        }
    };
    BodyStructure::Single {
        body: Body { basic, specific },
        extension_data: extensions.then(|| SinglePartExtensionData {
            md5: NString(None),
            tail: disposition(part),
        }),
    }
}

fn body_structure_at(
    message: &Message<'_>,
    extensions: bool,
    depth: usize,
) -> BodyStructure<'static> {
    match message.parts.first() {
        Some(root) => part_structure(message, root, extensions, depth),
        None => empty_text_part(),
    }
}

/// What is asked of the part a section's numbers lead to.
enum Want<'s> {
    /// `BODY[1.2]`: the part's content.
    Content,
    Header,
    Text,
    Mime,
    Fields(&'s [AString<'s>], bool),
}

/// The bytes of `BODY[section]` (`None` section: the whole message); `None` when the
/// section names a part the message does not have.
pub fn section(raw: &[u8], section: Option<&Section<'_>>) -> Option<Vec<u8>> {
    let Some(section) = section else {
        return Some(raw.to_vec());
    };
    let (path, want): (&[NonZeroU32], Want<'_>) = match section {
        Section::Part(Part(path)) => (path.as_ref(), Want::Content),
        Section::Header(part) => (part_path(part), Want::Header),
        Section::Text(part) => (part_path(part), Want::Text),
        Section::Mime(Part(path)) => (path.as_ref(), Want::Mime),
        Section::HeaderFields(part, names) => (part_path(part), Want::Fields(names.as_ref(), true)),
        Section::HeaderFieldsNot(part, names) => {
            (part_path(part), Want::Fields(names.as_ref(), false))
        }
    };
    find(raw, path, want, 0)
}

fn part_path(part: &Option<Part>) -> &[NonZeroU32] {
    part.as_ref().map(|Part(path)| path.as_ref()).unwrap_or(&[])
}

/// Follows `path` through `raw` (a message) and answers `want` there.
fn find(raw: &[u8], path: &[NonZeroU32], want: Want<'_>, depth: usize) -> Option<Vec<u8>> {
    if depth > MAX_DEPTH {
        return None;
    }
    let Some((&first, rest)) = path.split_first() else {
        // No numbers: HEADER, TEXT or HEADER.FIELDS of this message itself, which need no
        // MIME parsing (what clients fetch for every message of a mailbox).
        let (header, text) = raw.split_at(header_end(raw));
        return match want {
            Want::Header => Some(header.to_vec()),
            Want::Text => Some(text.to_vec()),
            Want::Fields(names, include) => Some(header_fields(header, names, include)),
            Want::Content | Want::Mime => None,
        };
    };
    let message = parse(raw)?;
    let root = message.parts.first()?;
    // The numbered part: a child of the root multipart, or for a single-part message, part 1
    // is its body.
    let mut part: &MessagePart<'_> = match &root.body {
        PartType::Multipart(_) => *children(&message, root).get(first.get() as usize - 1)?,
        _ if first.get() == 1 => root,
        _ => return None,
    };
    for (index, number) in rest.iter().enumerate() {
        if is_message_rfc822(part) {
            // Into the encapsulated message: its numbering starts again.
            let inner = part_bytes(&message, part).to_vec();
            return find(&inner, &rest[index..], want, depth + 1);
        }
        part = match &part.body {
            PartType::Multipart(_) => *children(&message, part).get(number.get() as usize - 1)?,
            _ => return None,
        };
    }
    match want {
        Want::Content => Some(part_bytes(&message, part).to_vec()),
        Want::Mime => Some(part_header_bytes(&message, part).to_vec()),
        // HEADER, TEXT and HEADER.FIELDS after numbers are about an encapsulated message.
        Want::Header | Want::Text | Want::Fields(..) if is_message_rfc822(part) => {
            let inner = part_bytes(&message, part).to_vec();
            find(&inner, &[], want, depth + 1)
        }
        _ => None,
    }
}

/// Whether `raw` holds the blank line that ends a header.
pub fn has_header_end(raw: &[u8]) -> bool {
    raw.starts_with(b"\r\n")
        || raw.starts_with(b"\n")
        || raw.windows(2).any(|w| w == b"\n\n")
        || raw.windows(3).any(|w| w == b"\n\r\n")
}

/// Where the header ends: after the blank line (CRLF or bare LF), or the end of the message.
pub fn header_end(raw: &[u8]) -> usize {
    let mut at = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        at += line.len();
        if line == b"\r\n" || line == b"\n" {
            return at;
        }
    }
    raw.len()
}

/// The header fields named (`include`) or all but those, followed by the blank line.
pub fn header_fields(header: &[u8], names: &[AString<'_>], include: bool) -> Vec<u8> {
    let wanted = |name: &[u8]| {
        names
            .iter()
            .any(|n| n.as_ref().eq_ignore_ascii_case(name.trim_ascii()))
    };
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            keep = wanted(name) == include;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTIPART: &[u8] = b"From: Ann <ann@example.test>\r\n\
To: bob@example.test, \"Cy\" <cy@example.test>\r\n\
Subject: =?utf-8?q?caf=C3=A9?=\r\n\
Date: Tue, 24 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <m1@example.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
preamble\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
hello\r\n\
there\r\n\
--b1\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
Subject: inner\r\n\
Content-Type: text/html\r\n\
\r\n\
<p>inner</p>\r\n\
--b1\r\n\
Content-Type: application/octet-stream; name=\"a.bin\"\r\n\
Content-Disposition: attachment; filename=\"a.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
AAEC\r\n\
--b1--\r\n";

    fn path(numbers: &[u32]) -> Part {
        let numbers: Vec<NonZeroU32> = numbers
            .iter()
            .map(|&n| NonZeroU32::new(n).expect("non-zero"))
            .collect();
        Part(Vec1::try_from(numbers).expect("one or more"))
    }

    fn text(bytes: Option<Vec<u8>>) -> String {
        String::from_utf8(bytes.expect("section exists")).expect("utf-8")
    }

    #[test]
    fn sections_are_the_stored_bytes() {
        assert_eq!(
            text(section(MULTIPART, Some(&Section::Part(path(&[1]))))),
            "hello\r\nthere"
        );
        assert_eq!(
            text(section(MULTIPART, Some(&Section::Mime(path(&[1]))))),
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        );
        assert_eq!(
            text(section(MULTIPART, Some(&Section::Header(Some(path(&[2])))))),
            "Subject: inner\r\nContent-Type: text/html\r\n\r\n"
        );
        assert_eq!(
            text(section(MULTIPART, Some(&Section::Text(Some(path(&[2])))))),
            "<p>inner</p>"
        );
        assert_eq!(
            text(section(MULTIPART, Some(&Section::Part(path(&[2, 1]))))),
            "<p>inner</p>"
        );
        assert_eq!(
            text(section(MULTIPART, Some(&Section::Part(path(&[3]))))),
            "AAEC"
        );
        let header = text(section(MULTIPART, Some(&Section::Header(None))));
        assert!(
            header.starts_with("From: Ann")
                && header.ends_with("multipart/mixed; boundary=\"b1\"\r\n\r\n")
        );
        let names =
            Vec1::try_from(vec![AString::try_from("subject").expect("astring")]).expect("one");
        assert_eq!(
            text(section(
                MULTIPART,
                Some(&Section::HeaderFields(None, names))
            )),
            "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\n"
        );
        assert!(section(MULTIPART, Some(&Section::Part(path(&[9])))).is_none());
        assert_eq!(section(MULTIPART, None).as_deref(), Some(MULTIPART));
    }

    #[test]
    fn deep_nesting_is_cut_off_not_followed() {
        let depth = 3000;
        let mut raw = String::from("Subject: deep\r\n");
        for level in 0..depth {
            raw.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n--b{level}\r\n"
            ));
        }
        raw.push_str("Content-Type: text/plain\r\n\r\nbottom\r\n");
        for level in (0..depth).rev() {
            raw.push_str(&format!("--b{level}--\r\n"));
        }
        // On a small stack, as a worker thread has: no overflow.
        let handle = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(move || {
                let message = parse(raw.as_bytes()).expect("parses");
                let structure = body_structure(&message, true);
                let mut levels = 0;
                let mut current = &structure;
                while let BodyStructure::Multi { bodies, .. } = current {
                    levels += 1;
                    current = &bodies.as_ref()[0];
                }
                levels
            })
            .expect("thread");
        let levels = handle.join().expect("no overflow");
        assert!(levels <= MAX_DEPTH + 1, "{levels}");
    }

    #[test]
    fn single_part_messages_have_part_one() {
        let raw = b"Subject: x\r\n\r\nbody\r\n";
        assert_eq!(
            text(section(raw, Some(&Section::Part(path(&[1]))))),
            "body\r\n"
        );
        assert_eq!(text(section(raw, Some(&Section::Text(None)))), "body\r\n");
        assert!(section(raw, Some(&Section::Part(path(&[2])))).is_none());
    }

    #[test]
    fn structure_and_envelope_describe_the_parts() {
        let message = parse(MULTIPART).expect("parses");
        let structure = body_structure(&message, true);
        let BodyStructure::Multi {
            bodies, subtype, ..
        } = &structure
        else {
            panic!("multipart expected: {structure:?}");
        };
        assert_eq!(subtype, &istring("MIXED"));
        assert_eq!(bodies.as_ref().len(), 3);
        let BodyStructure::Single { body, .. } = &bodies.as_ref()[0] else {
            panic!("single part expected");
        };
        assert_eq!(body.basic.size, "hello\r\nthere".len() as u32);
        assert!(matches!(
            body.specific,
            SpecificFields::Text {
                number_of_lines: 2,
                ..
            }
        ));
        let BodyStructure::Single { body, .. } = &bodies.as_ref()[1] else {
            panic!("single part expected");
        };
        assert!(matches!(body.specific, SpecificFields::Message { .. }));
        let envelope = envelope(&message);
        assert_eq!(envelope.subject, nstring(Some("=?utf-8?q?caf=C3=A9?=")));
        assert_eq!(envelope.to.len(), 2);
        assert_eq!(envelope.from[0].host, nstring(Some("example.test")));
        assert_eq!(envelope.sender, envelope.from);
        assert_eq!(envelope.message_id, nstring(Some("<m1@example.test>")));
    }
}
