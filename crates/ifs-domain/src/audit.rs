//! What `ifs-guide check` looks for: every way a dialogue as stored can disagree with the rules of
//! the list (see [`crate::dialogue`]). Each store adapter reads its records into a
//! [`StoredDialogue`] and [`audit`] names what is wrong, so both stores are judged by one rule book.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::{DialogueId, DialogueSummary, MessageId, Timestamp, UserId};

/// One stored message as the audit sees it: where it is filed and what it links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLink {
    /// The position the store files the message under (its key), which orders the list.
    pub position: u64,
    /// The position the message itself records.
    pub seq: u64,
    pub id: MessageId,
    /// The dialogue the message says it belongs to.
    pub dialogue_id: DialogueId,
    pub prev_id: Option<MessageId>,
    pub next_id: Option<MessageId>,
    pub created_at: Timestamp,
    /// The owner written on the message, for stores that keep one on every message.
    pub owner: Option<UserId>,
}

/// Everything a store keeps about one dialogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDialogue {
    pub id: DialogueId,
    /// The messages filed under the dialogue, in any order.
    pub messages: Vec<StoredLink>,
    /// Records filed under the dialogue that could not be read, with the reason.
    pub unreadable: Vec<(u64, String)>,
    /// The summary kept on the head, if the head has one.
    pub summary: Option<DialogueSummary>,
    /// The entries through which the owner's listing finds the dialogue: owner and last
    /// activity (ms) of each.
    pub listed: Vec<(UserId, i64)>,
    /// Whether the head is marked as being deleted: hidden from everyone, its messages going
    /// in batches, the head last. Such a dialogue is a deletion in progress, not a broken list.
    pub deleting: bool,
}

impl StoredDialogue {
    /// A dialogue with nothing read yet.
    #[must_use]
    pub fn new(id: DialogueId) -> Self {
        Self {
            id,
            messages: Vec::new(),
            unreadable: Vec::new(),
            summary: None,
            listed: Vec::new(),
            deleting: false,
        }
    }
}

/// One way in which a stored dialogue is not a valid list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    #[error("no head at position 1: messages at {positions:?} are orphans")]
    NoHead { positions: Vec<u64> },
    #[error("the head carries no summary")]
    NoSummary,
    #[error("the record at position {position} cannot be read: {reason}")]
    Unreadable { position: u64, reason: String },
    #[error("message at position {position} records seq {seq}")]
    Misfiled { position: u64, seq: u64 },
    #[error("positions jump from {after} to {next}")]
    Gap { after: u64, next: u64 },
    #[error("message at position {position} says it belongs to dialogue {dialogue}")]
    ForeignMessage { position: u64, dialogue: DialogueId },
    #[error("message id {id} is filed at positions {positions:?}")]
    DuplicateId { id: MessageId, positions: Vec<u64> },
    #[error("the head has a prev link ({prev})")]
    HeadHasPrev { prev: MessageId },
    #[error("messages at positions {position} and {next} are not linked both ways")]
    BrokenLink { position: u64, next: u64 },
    #[error(
        "the {link} link of the message at position {position} names {target}, which is not in this dialogue"
    )]
    DanglingLink { position: u64, link: &'static str, target: MessageId },
    #[error("message {id} is named as {link} by the messages at positions {positions:?}: a fork")]
    Fork { id: MessageId, link: &'static str, positions: Vec<u64> },
    #[error("following next links from the head comes back to position {position}: a cycle")]
    Cycle { position: u64 },
    #[error("messages at positions {positions:?} cannot be reached from the head: orphans")]
    Orphans { positions: Vec<u64> },
    #[error("the summary's {field} is {summary}, the list says {list}")]
    SummaryMismatch { field: &'static str, summary: String, list: String },
    #[error("messages at positions {positions:?} name another owner than the summary")]
    OwnerMismatch { positions: Vec<u64> },
    #[error(
        "the owner's listing has {entries:?} (owner, activity ms) for it, expected [({owner}, {expected})]"
    )]
    Listing { owner: UserId, expected: i64, entries: Vec<(UserId, i64)> },
    #[error("listed for {entries:?} (owner, activity ms) but has no messages")]
    ListedWithoutMessages { entries: Vec<(UserId, i64)> },
    #[error("being deleted, yet still listed for {entries:?} (owner, activity ms)")]
    ListedWhileDeleting { entries: Vec<(UserId, i64)> },
}

/// Everything wrong with one stored dialogue; empty when it is a valid list with a true summary.
#[must_use]
pub fn audit(stored: &StoredDialogue) -> Vec<Finding> {
    let mut findings: Vec<Finding> = stored
        .unreadable
        .iter()
        .map(|(position, reason)| Finding::Unreadable { position: *position, reason: reason.clone() })
        .collect();
    if stored.deleting {
        // Its messages go in batches before its head: any subset of them may be left, so the
        // list's rules do not apply; only that nobody can find it any more.
        if !stored.listed.is_empty() {
            findings.push(Finding::ListedWhileDeleting { entries: stored.listed.clone() });
        }
        return findings;
    }
    let mut messages: Vec<&StoredLink> = stored.messages.iter().collect();
    messages.sort_by_key(|m| m.position);
    if messages.is_empty() {
        if !stored.listed.is_empty() {
            findings.push(Finding::ListedWithoutMessages { entries: stored.listed.clone() });
        }
        return findings;
    }

    positions(stored.id, &messages, &mut findings);
    let by_id = ids(&messages, &mut findings);
    links(&messages, &by_id, &mut findings);

    let head = messages.first().filter(|m| m.position == 1);
    let Some(head) = head else {
        findings.push(Finding::NoHead { positions: messages.iter().map(|m| m.position).collect() });
        return findings;
    };
    if let Some(prev) = head.prev_id {
        findings.push(Finding::HeadHasPrev { prev });
    }
    walk(head, &messages, &by_id, &mut findings);
    match &stored.summary {
        Some(summary) => {
            against_summary(summary, &messages, &mut findings);
            listing(summary, &stored.listed, &mut findings);
        }
        None => findings.push(Finding::NoSummary),
    }
    findings
}

/// Positions run 1, 2, 3 … and every message is filed where it says, in this dialogue.
fn positions(dialogue: DialogueId, messages: &[&StoredLink], findings: &mut Vec<Finding>) {
    for message in messages {
        if message.seq != message.position {
            findings.push(Finding::Misfiled { position: message.position, seq: message.seq });
        }
        if message.dialogue_id != dialogue {
            findings
                .push(Finding::ForeignMessage { position: message.position, dialogue: message.dialogue_id });
        }
    }
    for pair in messages.windows(2) {
        if pair[1].position != pair[0].position + 1 {
            findings.push(Finding::Gap { after: pair[0].position, next: pair[1].position });
        }
    }
}

/// The messages by id, reporting ids filed more than once.
fn ids<'a>(messages: &[&'a StoredLink], findings: &mut Vec<Finding>) -> HashMap<MessageId, &'a StoredLink> {
    let mut filed: BTreeMap<MessageId, Vec<u64>> = BTreeMap::new();
    for message in messages {
        filed.entry(message.id).or_default().push(message.position);
    }
    for (id, positions) in filed {
        if positions.len() > 1 {
            findings.push(Finding::DuplicateId { id, positions });
        }
    }
    messages.iter().map(|m| (m.id, *m)).collect()
}

/// Neighbours link both ways, every link names a message of this dialogue, and no message is
/// named by two others the same way.
fn links(messages: &[&StoredLink], by_id: &HashMap<MessageId, &StoredLink>, findings: &mut Vec<Finding>) {
    for pair in messages.windows(2) {
        if pair[0].next_id != Some(pair[1].id) || pair[1].prev_id != Some(pair[0].id) {
            findings.push(Finding::BrokenLink { position: pair[0].position, next: pair[1].position });
        }
    }
    let mut named: BTreeMap<(MessageId, &'static str), Vec<u64>> = BTreeMap::new();
    for message in messages {
        for (link, target) in [("prev", message.prev_id), ("next", message.next_id)] {
            let Some(target) = target else { continue };
            if by_id.contains_key(&target) {
                named.entry((target, link)).or_default().push(message.position);
            } else {
                findings.push(Finding::DanglingLink { position: message.position, link, target });
            }
        }
    }
    for ((id, link), positions) in named {
        if positions.len() > 1 {
            findings.push(Finding::Fork { id, link, positions });
        }
    }
}

/// Follows next links from the head: what it does not reach is orphaned.
fn walk(
    head: &StoredLink,
    messages: &[&StoredLink],
    by_id: &HashMap<MessageId, &StoredLink>,
    findings: &mut Vec<Finding>,
) {
    let mut reached = HashSet::from([head.id]);
    let mut at = head;
    while let Some(next) = at.next_id.and_then(|id| by_id.get(&id)) {
        if !reached.insert(next.id) {
            findings.push(Finding::Cycle { position: next.position });
            break;
        }
        at = next;
    }
    let orphans: Vec<u64> =
        messages.iter().filter(|m| !reached.contains(&m.id)).map(|m| m.position).collect();
    if !orphans.is_empty() {
        findings.push(Finding::Orphans { positions: orphans });
    }
}

/// The summary on the head tells the truth about the list.
fn against_summary(summary: &DialogueSummary, messages: &[&StoredLink], findings: &mut Vec<Finding>) {
    let (Some(head), Some(tail)) = (messages.first(), messages.last()) else { return };
    let mut compare = |field: &'static str, summary: String, list: String| {
        if summary != list {
            findings.push(Finding::SummaryMismatch { field, summary, list });
        }
    };
    compare("id", summary.id.to_string(), head.dialogue_id.to_string());
    compare("message_count", summary.message_count.to_string(), messages.len().to_string());
    compare("tail_id", summary.tail_id.to_string(), tail.id.to_string());
    compare("created_at", summary.created_at.to_rfc3339(), head.created_at.to_rfc3339());
    let latest = messages.iter().map(|m| m.created_at).max().unwrap_or(head.created_at);
    compare("updated_at", summary.updated_at.to_rfc3339(), latest.to_rfc3339());
    let strangers: Vec<u64> = messages
        .iter()
        .filter(|m| m.owner.is_some_and(|owner| owner != summary.owner))
        .map(|m| m.position)
        .collect();
    if !strangers.is_empty() {
        findings.push(Finding::OwnerMismatch { positions: strangers });
    }
}

/// The owner's listing finds the dialogue exactly once, under its last activity.
fn listing(summary: &DialogueSummary, listed: &[(UserId, i64)], findings: &mut Vec<Finding>) {
    let expected = summary.updated_at.timestamp_millis();
    if listed != [(summary.owner, expected)] {
        findings.push(Finding::Listing { owner: summary.owner, expected, entries: listed.to_vec() });
    }
}

/// What a whole-store audit found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    pub dialogues: u64,
    pub messages: u64,
    /// Findings by dialogue; a dialogue without findings has no entry.
    pub findings: BTreeMap<DialogueId, Vec<Finding>>,
    /// Dialogues whose deletion has begun and not finished (see [`StoredDialogue::deleting`]),
    /// not counted in `dialogues` or `messages`.
    pub deleting: BTreeSet<DialogueId>,
}

impl AuditReport {
    /// Audits one dialogue and records the outcome; answers whether it found anything.
    pub fn record(&mut self, stored: &StoredDialogue) -> bool {
        if stored.deleting {
            self.deleting.insert(stored.id);
        } else {
            self.dialogues += 1;
            self.messages += stored.messages.len() as u64;
        }
        let findings = audit(stored);
        let found = !findings.is_empty();
        if found {
            self.findings.insert(stored.id, findings);
        }
        found
    }

    /// Takes back what [`record`](Self::record) counted for a dialogue of `messages` messages,
    /// for stores that read it again after a scan that could not see it whole.
    pub fn forget(&mut self, id: DialogueId, messages: u64) {
        if !self.deleting.remove(&id) {
            self.dialogues = self.dialogues.saturating_sub(1);
            self.messages = self.messages.saturating_sub(messages);
        }
        self.findings.remove(&id);
    }

    /// How many findings there are in all.
    #[must_use]
    pub fn finding_count(&self) -> usize {
        self.findings.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;

    use super::*;

    fn at(second: i64) -> Timestamp {
        chrono::Utc.timestamp_opt(1_750_000_000 + second, 0).single().unwrap()
    }

    /// A valid dialogue of `n` messages with a true summary and listing.
    fn valid(n: u64) -> StoredDialogue {
        let ids: Vec<MessageId> = (0..n).map(|_| MessageId::generate()).collect();
        let id = DialogueId::from(ids[0]);
        let owner = UserId::generate();
        let messages: Vec<StoredLink> = (0..n as usize)
            .map(|i| StoredLink {
                position: i as u64 + 1,
                seq: i as u64 + 1,
                id: ids[i],
                dialogue_id: id,
                prev_id: i.checked_sub(1).map(|p| ids[p]),
                next_id: ids.get(i + 1).copied(),
                created_at: at(i as i64),
                owner: Some(owner),
            })
            .collect();
        let summary = DialogueSummary {
            id,
            owner,
            title: "t".into(),
            created_at: at(0),
            updated_at: at(n as i64 - 1),
            message_count: n,
            tail_id: ids[n as usize - 1],
            forked_from: None,
        };
        let listed = vec![(owner, summary.updated_at.timestamp_millis())];
        StoredDialogue { summary: Some(summary), listed, messages, ..StoredDialogue::new(id) }
    }

    #[test]
    fn a_valid_dialogue_has_no_findings() {
        for n in [1, 2, 5] {
            assert_eq!(audit(&valid(n)), [], "{n} messages");
        }
    }

    #[test]
    fn a_missing_middle_message_is_a_gap_a_broken_link_and_dangling_links() {
        let mut stored = valid(4);
        let lost = stored.messages.remove(1);
        let findings = audit(&stored);
        assert!(findings.contains(&Finding::Gap { after: 1, next: 3 }), "{findings:?}");
        assert!(findings.contains(&Finding::BrokenLink { position: 1, next: 3 }), "{findings:?}");
        assert!(findings.contains(&Finding::DanglingLink { position: 1, link: "next", target: lost.id }));
        assert!(findings.contains(&Finding::DanglingLink { position: 3, link: "prev", target: lost.id }));
        assert!(
            findings.iter().any(|f| matches!(f, Finding::SummaryMismatch { field: "message_count", .. }))
        );
    }

    #[test]
    fn two_messages_after_one_are_a_fork_and_the_loser_is_an_orphan() {
        let mut stored = valid(3);
        // The third message names the first as its prev, as a lost race that wrote anyway would.
        stored.messages[2].prev_id = Some(stored.messages[0].id);
        stored.messages[1].next_id = None;
        let findings = audit(&stored);
        let first = stored.messages[0].id;
        assert!(findings.contains(&Finding::Fork { id: first, link: "prev", positions: vec![2, 3] }));
        assert!(findings.contains(&Finding::Orphans { positions: vec![3] }), "{findings:?}");
    }

    #[test]
    fn messages_without_a_head_are_orphans() {
        let mut stored = valid(3);
        stored.messages.remove(0);
        stored.summary = None;
        let findings = audit(&stored);
        assert!(findings.contains(&Finding::NoHead { positions: vec![2, 3] }), "{findings:?}");
    }

    #[test]
    fn a_summary_that_lags_its_list_is_reported_field_by_field() {
        let mut stored = valid(3);
        let summary = stored.summary.as_mut().unwrap();
        summary.message_count = 2;
        summary.tail_id = stored.messages[1].id;
        let findings = audit(&stored);
        let fields: Vec<&str> = findings
            .iter()
            .filter_map(|f| match f {
                Finding::SummaryMismatch { field, .. } => Some(*field),
                _ => None,
            })
            .collect();
        assert_eq!(fields, ["message_count", "tail_id"]);
    }

    #[test]
    fn a_cycle_a_stray_head_link_and_a_misfiled_message_are_reported() {
        let mut stored = valid(3);
        stored.messages[2].next_id = Some(stored.messages[0].id);
        stored.messages[0].prev_id = Some(stored.messages[2].id);
        stored.messages[1].seq = 7;
        let findings = audit(&stored);
        assert!(findings.contains(&Finding::Cycle { position: 1 }), "{findings:?}");
        assert!(findings.contains(&Finding::HeadHasPrev { prev: stored.messages[2].id }));
        assert!(findings.contains(&Finding::Misfiled { position: 2, seq: 7 }));
    }

    #[test]
    fn the_listing_must_find_it_once_under_its_last_activity() {
        let mut stored = valid(2);
        let (owner, ms) = stored.listed[0];
        stored.listed.push((owner, ms - 1000));
        assert!(matches!(audit(&stored)[..], [Finding::Listing { .. }]));
        stored.listed.clear();
        assert!(matches!(audit(&stored)[..], [Finding::Listing { .. }]));
        let orphaned_entry = StoredDialogue { listed: vec![(owner, ms)], ..StoredDialogue::new(stored.id) };
        assert!(matches!(audit(&orphaned_entry)[..], [Finding::ListedWithoutMessages { .. }]));
    }

    #[test]
    fn another_owner_on_a_message_and_an_unreadable_record_are_reported() {
        let mut stored = valid(3);
        stored.messages[2].owner = Some(UserId::generate());
        stored.unreadable.push((4, "not JSON".into()));
        let findings = audit(&stored);
        assert!(findings.contains(&Finding::OwnerMismatch { positions: vec![3] }));
        assert!(findings.contains(&Finding::Unreadable { position: 4, reason: "not JSON".into() }));
    }

    #[test]
    fn a_deletion_in_progress_is_no_finding_unless_it_is_still_listed_and_orphans_still_are() {
        let mut stored = valid(5);
        stored.deleting = true;
        stored.listed.clear();
        stored.messages.retain(|m| m.position == 1 || m.position == 4);
        assert_eq!(audit(&stored), []);
        let mut report = AuditReport::default();
        assert!(!report.record(&stored));
        assert_eq!((report.dialogues, report.messages, report.deleting.len()), (0, 0, 1));

        stored.listed = valid(1).listed;
        assert!(matches!(audit(&stored)[..], [Finding::ListedWhileDeleting { .. }]));
        // The head goes last: what is left without one was not a deletion's doing.
        let mut headless = valid(3);
        headless.messages.remove(0);
        headless.summary = None;
        headless.listed.clear();
        assert!(audit(&headless).iter().any(|f| matches!(f, Finding::NoHead { .. })));
    }

    #[test]
    fn a_report_counts_everything_and_keeps_only_findings() {
        let mut report = AuditReport::default();
        assert!(!report.record(&valid(3)));
        let mut broken = valid(2);
        broken.summary = None;
        assert!(report.record(&broken));
        assert_eq!((report.dialogues, report.messages, report.finding_count()), (2, 5, 1));
        report.forget(broken.id, 2);
        assert_eq!((report.dialogues, report.messages, report.finding_count()), (1, 3, 0));
    }
}
