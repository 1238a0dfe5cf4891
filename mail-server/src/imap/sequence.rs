//! Sequence sets (`1:4,7,9:*`) tested one number at a time: a UID set may span billions of
//! numbers, so it is never expanded.

use std::num::NonZeroU32;

use imap_next::imap_types::core::Vec1;
use imap_next::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_next::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

fn value(bound: &SeqOrUid, last: u32) -> u32 {
    match bound {
        SeqOrUid::Value(value) => value.get(),
        SeqOrUid::Asterisk => last,
    }
}

/// Whether `number` is in `set`, `*` being `last` (the largest number in use).
pub fn contains(set: &SequenceSet, number: u32, last: u32) -> bool {
    set.0.as_ref().iter().any(|sequence| match sequence {
        Sequence::Single(bound) => value(bound, last) == number,
        Sequence::Range(a, b) => {
            let (a, b) = (value(a, last), value(b, last));
            a.min(b) <= number && number <= a.max(b)
        }
    })
}

/// The set as inclusive `(low, high)` ranges, `*` being `last`: sorted, overlapping and
/// adjacent ones merged (`1:*,1:*,…` is one range, however often the client repeats it).
pub fn ranges(set: &SequenceSet, last: u32) -> Vec<(u32, u32)> {
    let mut ranges: Vec<(u32, u32)> = set
        .0
        .as_ref()
        .iter()
        .map(|sequence| match sequence {
            Sequence::Single(bound) => {
                let v = value(bound, last);
                (v, v)
            }
            Sequence::Range(a, b) => {
                let (a, b) = (value(a, last), value(b, last));
                (a.min(b), a.max(b))
            }
        })
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (low, high) in ranges {
        match merged.last_mut() {
            Some(previous) if low <= previous.1.saturating_add(1) => {
                previous.1 = previous.1.max(high);
            }
            _ => merged.push((low, high)),
        }
    }
    merged
}

/// UIDs as UIDPLUS writes them, runs folded into ranges (`4:7,9`).
pub fn uid_set(uids: &[u32]) -> Option<UidSet> {
    let mut elements = Vec::new();
    let mut run: Option<(u32, u32)> = None;
    for &uid in uids {
        run = match run {
            Some((start, end)) if end.checked_add(1) == Some(uid) => Some((start, uid)),
            Some(done) => {
                elements.extend(element(done));
                Some((uid, uid))
            }
            None => Some((uid, uid)),
        };
    }
    elements.extend(run.and_then(element));
    Vec1::try_from(elements).ok().map(UidSet)
}

fn element((start, end): (u32, u32)) -> Option<UidElement> {
    let (start, end) = (NonZeroU32::new(start)?, NonZeroU32::new(end)?);
    Some(if start == end {
        UidElement::Single(start)
    } else {
        UidElement::Range(start, end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_tested_without_expanding() {
        let set: SequenceSet = "2:4,9,12:*".parse().expect("set");
        let hits: Vec<u32> = (1..=15).filter(|&n| contains(&set, n, 14)).collect();
        assert_eq!(hits, vec![2, 3, 4, 9, 12, 13, 14]);
        let huge: SequenceSet = "1:4294967295".parse().expect("set");
        assert!(contains(&huge, 4_000_000_000, 10));
        // `5:*` with a last number under 5 means `last:5`.
        let reversed: SequenceSet = "5:*".parse().expect("set");
        assert!(contains(&reversed, 3, 3));
        assert!(!contains(&reversed, 2, 3));
        assert_eq!(ranges(&set, 14), vec![(2, 4), (9, 9), (12, 14)]);
        assert_eq!(ranges(&reversed, 3), vec![(3, 5)]);
        let repeated: SequenceSet = "1:*,1:*,3,2:4,9:8".parse().expect("set");
        assert_eq!(ranges(&repeated, 5), vec![(1, 5), (8, 9)]);
    }

    #[test]
    fn uid_sets_fold_runs() {
        let set = uid_set(&[4, 5, 6, 7, 9, 11, 12]).expect("non-empty");
        assert_eq!(
            set.0.as_ref(),
            &[
                UidElement::Range(
                    NonZeroU32::new(4).expect("4"),
                    NonZeroU32::new(7).expect("7")
                ),
                UidElement::Single(NonZeroU32::new(9).expect("9")),
                UidElement::Range(
                    NonZeroU32::new(11).expect("11"),
                    NonZeroU32::new(12).expect("12")
                ),
            ]
        );
        assert!(uid_set(&[]).is_none());
    }
}
