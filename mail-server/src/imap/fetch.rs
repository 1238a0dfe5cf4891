//! FETCH data items for one message (RFC 3501 §6.4.5, §7.4.2).

use imap_next::imap_types::core::{NString, Vec1};
use imap_next::imap_types::datetime::DateTime;
use imap_next::imap_types::fetch::{MessageDataItem, MessageDataItemName};
use imap_next::imap_types::flag::{Flag, FlagFetch};

use super::structure;
use crate::store::Summary;

/// Whether answering `items` needs the message's bytes.
pub fn needs_bytes(items: &[MessageDataItemName<'_>]) -> bool {
    items.iter().any(|item| {
        !matches!(
            item,
            MessageDataItemName::Flags
                | MessageDataItemName::InternalDate
                | MessageDataItemName::Rfc822Size
                | MessageDataItemName::Uid
        )
    })
}

/// Whether what `items` need of the bytes is the header only (ENVELOPE, RFC822.HEADER,
/// `BODY[HEADER]`, `BODY[HEADER.FIELDS (…)]`): what clients fetch for a whole mailbox.
pub fn header_only(items: &[MessageDataItemName<'_>]) -> bool {
    use imap_next::imap_types::fetch::Section;
    items.iter().all(|item| match item {
        MessageDataItemName::Flags
        | MessageDataItemName::InternalDate
        | MessageDataItemName::Rfc822Size
        | MessageDataItemName::Uid
        | MessageDataItemName::Envelope
        | MessageDataItemName::Rfc822Header => true,
        MessageDataItemName::BodyExt { section, .. } => matches!(
            section,
            Some(
                Section::Header(None)
                    | Section::HeaderFields(None, _)
                    | Section::HeaderFieldsNot(None, _)
            )
        ),
        _ => false,
    })
}

/// Whether fetching `items` marks the message \Seen (a body read without PEEK).
pub fn sets_seen(items: &[MessageDataItemName<'_>]) -> bool {
    items.iter().any(|item| {
        matches!(
            item,
            MessageDataItemName::BodyExt { peek: false, .. }
                | MessageDataItemName::Rfc822
                | MessageDataItemName::Rfc822Text
        )
    })
}

/// Items this server does not offer (BINARY is not advertised).
pub fn unsupported(items: &[MessageDataItemName<'_>]) -> bool {
    items.iter().any(|item| {
        matches!(
            item,
            MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. }
        )
    })
}

/// The flags as FETCH FLAGS writes them.
pub fn flags(flags: &str, recent: bool) -> Vec<FlagFetch<'static>> {
    let mut list: Vec<FlagFetch<'static>> = flags
        .split(' ')
        .filter(|f| !f.is_empty())
        .filter_map(|f| Flag::try_from(f).ok())
        .map(|flag| FlagFetch::Flag(bounded(flag)))
        .collect();
    if recent {
        list.push(FlagFetch::Recent);
    }
    list
}

fn bounded(flag: Flag<'_>) -> Flag<'static> {
    use imap_next::imap_types::IntoStatic as _;
    flag.into_static()
}

pub fn internal_date(unix: i64) -> Option<DateTime> {
    let utc = chrono::DateTime::from_timestamp(unix, 0)?;
    DateTime::try_from(utc.fixed_offset()).ok()
}

/// One message as FETCH sees it.
#[derive(Debug)]
pub struct Message<'a> {
    pub uid: u32,
    pub flags: &'a str,
    pub recent: bool,
    pub summary: &'a Summary,
    pub raw: Option<&'a [u8]>,
}

/// The data items for `names` (UID first when `with_uid`, as UID FETCH must include it).
pub fn items(
    names: &[MessageDataItemName<'_>],
    message: &Message<'_>,
    with_uid: bool,
) -> Option<Vec1<MessageDataItem<'static>>> {
    let raw = message.raw.unwrap_or_default();
    // Only these need the MIME structure; sections are cut from the bytes as needed.
    let structured = names.iter().any(|name| {
        matches!(
            name,
            MessageDataItemName::Envelope
                | MessageDataItemName::Body
                | MessageDataItemName::BodyStructure
        )
    });
    let parsed = if structured {
        structure::parse(raw)
    } else {
        None
    };
    let mut items = Vec::with_capacity(names.len() + 1);
    let uid = std::num::NonZeroU32::new(message.uid)?;
    if with_uid && !names.contains(&MessageDataItemName::Uid) {
        items.push(MessageDataItem::Uid(uid));
    }
    for name in names {
        let item = match name {
            MessageDataItemName::Uid => MessageDataItem::Uid(uid),
            MessageDataItemName::Flags => {
                MessageDataItem::Flags(flags(message.flags, message.recent))
            }
            MessageDataItemName::InternalDate => match internal_date(message.summary.internal_date)
            {
                Some(date) => MessageDataItem::InternalDate(date),
                None => continue,
            },
            MessageDataItemName::Rfc822Size => MessageDataItem::Rfc822Size(message.summary.size),
            MessageDataItemName::Envelope => match &parsed {
                Some(parsed) => MessageDataItem::Envelope(structure::envelope(parsed)),
                None => continue,
            },
            MessageDataItemName::Body => match &parsed {
                Some(parsed) => MessageDataItem::Body(structure::body_structure(parsed, false)),
                None => continue,
            },
            MessageDataItemName::BodyStructure => match &parsed {
                Some(parsed) => {
                    MessageDataItem::BodyStructure(structure::body_structure(parsed, true))
                }
                None => continue,
            },
            MessageDataItemName::Rfc822 => MessageDataItem::Rfc822(structure::nstring_bytes(raw)),
            MessageDataItemName::Rfc822Header => {
                let header = structure::section(
                    raw,
                    Some(&imap_next::imap_types::fetch::Section::Header(None)),
                )
                .unwrap_or_default();
                MessageDataItem::Rfc822Header(structure::nstring_bytes(&header))
            }
            MessageDataItemName::Rfc822Text => {
                let text = structure::section(
                    raw,
                    Some(&imap_next::imap_types::fetch::Section::Text(None)),
                )
                .unwrap_or_default();
                MessageDataItem::Rfc822Text(structure::nstring_bytes(&text))
            }
            MessageDataItemName::BodyExt {
                section, partial, ..
            } => {
                use imap_next::imap_types::IntoStatic as _;
                let bytes = structure::section(raw, section.as_ref());
                let (data, origin) = match (bytes, partial) {
                    (None, _) => (NString(None), None),
                    (Some(bytes), None) => (structure::nstring_bytes(&bytes), None),
                    (Some(bytes), Some((start, length))) => {
                        let from = (*start as usize).min(bytes.len());
                        let to = from.saturating_add(length.get() as usize).min(bytes.len());
                        (structure::nstring_bytes(&bytes[from..to]), Some(*start))
                    }
                };
                MessageDataItem::BodyExt {
                    section: section.clone().map(|s| s.into_static()),
                    origin,
                    data,
                }
            }
            _ => continue,
        };
        items.push(item);
    }
    Vec1::try_from(items).ok()
}
