//! The conformance suite: one set of cases that every adapter must pass, so the embedded store
//! on a laptop and DynamoDB/Redis in AWS behave the same. An adapter's test file invokes
//! [`conformance_suite!`](crate::conformance_suite) with a function that builds fresh, empty stores.

// Test support: a panic is how a case reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::TimeZone as _;
use ifs_domain::{
    DialogueId, DialogueSummary, Email, Limit, Message, MessageCursor, MessageId, MessageText, NewMessage,
    PAGE_BYTES, Role, SessionId, Timestamp, UserId, check_chain,
};

use crate::{
    Audit, Counter, Counters, DialogueStore, Session, SessionStore, StoreError, UserRecord, UserStore, Window,
};

/// Fresh, empty stores for one case. `guard` keeps whatever backs them (a temporary directory, a
/// table name) alive until the case ends.
pub struct Stores {
    pub users: Arc<dyn UserStore>,
    pub dialogues: Arc<dyn DialogueStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub counters: Arc<dyn Counters>,
    /// Audits the store that holds `dialogues`.
    pub audit: Arc<dyn Audit>,
    /// The safety counters, kept by the store that holds `dialogues`.
    pub safety: Arc<dyn crate::SafetyCounts>,
    pub guard: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// Generates one `#[tokio::test]` per conformance case, each on fresh stores from `$make`
/// (an async function returning [`Stores`]).
#[macro_export]
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::conformance_suite!(@cases $make;
            users_are_found_by_id_and_by_email,
            an_email_is_registered_only_once_even_under_a_race,
            a_session_lives_until_it_expires,
            a_revoked_session_is_gone,
            a_users_sessions_are_revoked_all_at_once,
            a_deleted_user_is_gone_and_their_email_free,
            a_reset_ends_every_lease_on_a_counter,
            hits_count_within_a_fixed_window_and_then_start_again,
            a_reset_counter_starts_afresh,
            amounts_add_up_in_a_window_that_closes_when_asked,
            parallel_hits_each_see_a_different_count,
            leases_are_held_until_released_or_expired,
            parallel_leases_admit_exactly_max,
            a_started_dialogue_is_a_one_message_list,
            appends_keep_the_list_valid_and_the_summary_current,
            concurrent_appends_all_land_in_one_list,
            someone_elses_or_an_unknown_dialogue_is_not_found,
            messages_page_in_list_order,
            messages_before_gives_the_latest_ones_oldest_first,
            dialogues_are_listed_newest_activity_first_in_pages,
            dialogues_are_private_to_their_owner,
            pages_of_large_messages_reach_every_message,
            a_renamed_dialogue_keeps_its_place_and_its_list,
            a_rename_racing_ten_appends_loses_none_of_them,
            a_deleted_dialogue_is_gone_for_everyone,
            deleting_all_takes_every_dialogue_of_the_owner_and_nothing_else,
            a_delete_racing_ten_appends_leaves_no_orphans,
            deleting_all_racing_appends_leaves_no_orphans,
            a_fork_copies_up_to_its_message_with_new_ids_and_leaves_the_original,
            a_fork_of_a_long_dialogue_is_whole,
            a_fork_racing_ten_appends_copies_exactly_its_part,
            a_regenerated_reply_keeps_its_earlier_versions,
            a_regeneration_racing_ten_appends_lands_first_or_is_refused,
            an_erased_account_leaves_nothing_even_with_ten_appends_racing,
            safety_counts_add_up_by_day_level_and_screener_even_in_parallel,
            a_users_country_is_set_cleared_and_read_back_by_id_and_email
        );
    };
    (@cases $make:path; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                $crate::conformance::$case($make().await).await;
            }
        )*
    };
}

/// A fixed instant plus `seconds`, so cases control time.
fn at(seconds: i64) -> Timestamp {
    chrono::Utc.timestamp_opt(1_750_000_000 + seconds, 0).single().expect("valid instant")
}

fn email(name: &str) -> Email {
    Email::parse(&format!("{name}@example.com")).expect("valid email")
}

fn user(name: &str) -> UserRecord {
    UserRecord {
        id: UserId::generate(),
        email: email(name),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        created_at: at(0),
        country: None,
    }
}

/// A new message by `role`, written at `when`.
pub fn said(role: Role, text: &str, when: Timestamp) -> NewMessage {
    NewMessage {
        id: MessageId::generate(),
        role,
        content: MessageText::parse(text.into()).expect("valid text"),
        created_at: when,
        meta: None,
    }
}

/// A dialogue of `n` alternating messages, the k-th written at second `start + k`.
async fn dialogue_of(stores: &Stores, owner: UserId, n: u64, start: i64) -> DialogueId {
    let head =
        stores.dialogues.start_dialogue(owner, said(Role::User, "message 1", at(start))).await.unwrap();
    for k in 2..=n {
        let role = if k % 2 == 0 { Role::Assistant } else { Role::User };
        let text = format!("message {k}");
        stores
            .dialogues
            .append_message(owner, head.dialogue_id, said(role, &text, at(start + k as i64)))
            .await
            .unwrap();
    }
    head.dialogue_id
}

/// Audits the whole store, expecting it to hold exactly `dialogues` dialogues of `messages`
/// messages in all, every one a valid list with a true summary.
async fn assert_audit_clean(stores: &Stores, dialogues: u64, messages: u64) {
    let report = stores.audit.audit().await.unwrap();
    assert_eq!(report.findings, Default::default(), "the audit found problems");
    assert_eq!((report.dialogues, report.messages), (dialogues, messages));
}

/// Every message of a dialogue, page after page.
async fn whole(stores: &Stores, owner: UserId, dialogue: DialogueId) -> Vec<Message> {
    let mut messages = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            stores.dialogues.messages(owner, dialogue, Limit::new_clamped(200, 200), cursor).await.unwrap();
        messages.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return messages,
        }
    }
}

pub async fn users_are_found_by_id_and_by_email(stores: Stores) {
    let ada = user("ada");
    stores.users.create_user(&ada).await.unwrap();

    assert_eq!(stores.users.user_by_id(ada.id).await.unwrap(), Some(ada.clone()));
    assert_eq!(stores.users.user_by_email(&ada.email).await.unwrap(), Some(ada));
    assert_eq!(stores.users.user_by_email(&email("nobody")).await.unwrap(), None);
    assert_eq!(stores.users.user_by_id(UserId::generate()).await.unwrap(), None);
}

pub async fn an_email_is_registered_only_once_even_under_a_race(stores: Stores) {
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let users = Arc::clone(&stores.users);
            tokio::spawn(async move { users.create_user(&user("race")).await })
        })
        .collect();
    let mut created = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(()) => created += 1,
            Err(StoreError::EmailTaken) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(created, 1);
    let winner = stores.users.user_by_email(&email("race")).await.unwrap().unwrap();
    assert_eq!(stores.users.user_by_id(winner.id).await.unwrap(), Some(winner));
}

pub async fn a_deleted_user_is_gone_and_their_email_free(stores: Stores) {
    let ada = user("ada");
    let bob = user("bob");
    stores.users.create_user(&ada).await.unwrap();
    stores.users.create_user(&bob).await.unwrap();
    assert_eq!(
        stores.users.user_by_id(ada.id).await.unwrap(),
        Some(ada.clone()),
        "remembered, if a store does"
    );

    stores.users.delete_user(&ada).await.unwrap();
    assert_eq!(stores.users.user_by_id(ada.id).await.unwrap(), None);
    assert_eq!(stores.users.user_by_email(&ada.email).await.unwrap(), None);
    assert_eq!(stores.users.user_by_id(bob.id).await.unwrap(), Some(bob.clone()), "only theirs");
    stores.users.delete_user(&ada).await.unwrap();

    // The email signs up again as someone new, whom deleting the old record again leaves be.
    let again = user("ada");
    stores.users.create_user(&again).await.unwrap();
    stores.users.delete_user(&ada).await.unwrap();
    assert_eq!(stores.users.user_by_email(&again.email).await.unwrap(), Some(again.clone()));
    assert_eq!(stores.users.user_by_id(again.id).await.unwrap(), Some(again));
}

pub async fn a_session_lives_until_it_expires(stores: Stores) {
    let session = Session {
        id: SessionId::generate(),
        user_id: UserId::generate(),
        created_at: at(0),
        expires_at: at(60),
    };
    stores.sessions.create_session(&session).await.unwrap();

    assert_eq!(stores.sessions.session(session.id, at(59)).await.unwrap(), Some(session.clone()));
    assert_eq!(stores.sessions.session(session.id, at(60)).await.unwrap(), None);
    assert_eq!(stores.sessions.session(SessionId::generate(), at(0)).await.unwrap(), None);
}

pub async fn a_revoked_session_is_gone(stores: Stores) {
    let keep = Session {
        id: SessionId::generate(),
        user_id: UserId::generate(),
        created_at: at(0),
        expires_at: at(600),
    };
    let drop = Session { id: SessionId::generate(), ..keep.clone() };
    stores.sessions.create_session(&keep).await.unwrap();
    stores.sessions.create_session(&drop).await.unwrap();

    stores.sessions.revoke_session(drop.id).await.unwrap();
    stores.sessions.revoke_session(SessionId::generate()).await.unwrap();

    assert_eq!(stores.sessions.session(drop.id, at(1)).await.unwrap(), None);
    assert_eq!(stores.sessions.session(keep.id, at(1)).await.unwrap(), Some(keep));
}

pub async fn hits_count_within_a_fixed_window_and_then_start_again(stores: Stores) {
    let ada = email("ada");
    let window = Duration::from_secs(900);
    for n in 1..=3 {
        let counted = stores.counters.hit(Counter::LoginAttempts(&ada), at(n * 10), window).await.unwrap();
        // The window is fixed from the first hit, not sliding.
        assert_eq!(counted, Window { hits: n as u32, resets_at: at(10 + 900) });
    }
    // Other counters, even of another kind for the same name, are separate.
    let bob = email("bob");
    assert_eq!(stores.counters.hit(Counter::LoginAttempts(&bob), at(40), window).await.unwrap().hits, 1);
    let user = UserId::generate();
    assert_eq!(stores.counters.hit(Counter::DialogueTurns(user), at(40), window).await.unwrap().hits, 1);

    assert_eq!(stores.counters.hit(Counter::LoginAttempts(&ada), at(909), window).await.unwrap().hits, 4);
    let fresh = stores.counters.hit(Counter::LoginAttempts(&ada), at(910), window).await.unwrap();
    assert_eq!(fresh, Window { hits: 1, resets_at: at(1810) });
}

pub async fn a_reset_counter_starts_afresh(stores: Stores) {
    let ada = email("ada");
    let window = Duration::from_secs(900);
    stores.counters.hit(Counter::LoginAttempts(&ada), at(0), window).await.unwrap();
    stores.counters.hit(Counter::LoginAttempts(&ada), at(1), window).await.unwrap();

    stores.counters.reset(Counter::LoginAttempts(&ada)).await.unwrap();
    stores.counters.reset(Counter::LoginAttempts(&email("never-counted"))).await.unwrap();

    let fresh = stores.counters.hit(Counter::LoginAttempts(&ada), at(3), window).await.unwrap();
    assert_eq!(fresh, Window { hits: 1, resets_at: at(903) });
}

/// What makes a throttle hold under parallel guessing: no two hits can read the same count.
pub async fn parallel_hits_each_see_a_different_count(stores: Stores) {
    let user = UserId::generate();
    let hits: Vec<_> = (0..60)
        .map(|_| {
            let counters = Arc::clone(&stores.counters);
            tokio::spawn(async move {
                counters.hit(Counter::DialogueTurns(user), at(0), Duration::from_secs(60)).await.unwrap().hits
            })
        })
        .collect();
    let mut seen = Vec::new();
    for hit in hits {
        seen.push(hit.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=60).collect::<Vec<u32>>());
}

pub async fn a_users_sessions_are_revoked_all_at_once(stores: Stores) {
    let (ada, bob) = (UserId::generate(), UserId::generate());
    let session = |user_id: UserId, minutes: i64| Session {
        id: SessionId::generate(),
        user_id,
        created_at: at(0),
        expires_at: at(60 * minutes),
    };
    let theirs = [session(ada, 10), session(ada, 60), session(ada, 5)];
    let other = session(bob, 10);
    for s in theirs.iter().chain([&other]) {
        stores.sessions.create_session(s).await.unwrap();
    }
    stores.sessions.revoke_session(theirs[2].id).await.unwrap();

    assert_eq!(stores.sessions.revoke_user_sessions(ada).await.unwrap(), 2);
    for s in &theirs {
        assert_eq!(stores.sessions.session(s.id, at(1)).await.unwrap(), None);
    }
    assert_eq!(stores.sessions.session(other.id, at(1)).await.unwrap(), Some(other.clone()));
    assert_eq!(stores.sessions.revoke_user_sessions(ada).await.unwrap(), 0);
    let later = session(ada, 10);
    stores.sessions.create_session(&later).await.unwrap();
    assert_eq!(stores.sessions.session(later.id, at(1)).await.unwrap(), Some(later), "a new login works");
}

pub async fn a_reset_ends_every_lease_on_a_counter(stores: Stores) {
    let counter = Counter::TurnsInFlight(UserId::generate());
    let minute = Duration::from_secs(60);
    assert!(stores.counters.lease(counter, "a", at(0), minute, 1).await.unwrap());
    assert!(!stores.counters.lease(counter, "b", at(1), minute, 1).await.unwrap());
    stores.counters.reset(counter).await.unwrap();
    assert!(stores.counters.lease(counter, "b", at(2), minute, 1).await.unwrap(), "a's lease is gone");
}

pub async fn amounts_add_up_in_a_window_that_closes_when_asked(stores: Stores) {
    let counter = Counter::TokensToday(UserId::generate());
    let counters = &stores.counters;
    assert_eq!(counters.peek(counter, at(0)).await.unwrap(), None);
    assert_eq!(
        counters.add(counter, 300, at(0), at(100)).await.unwrap(),
        Window { hits: 300, resets_at: at(100) }
    );
    let more = counters.add(counter, 200, at(50), at(500)).await.unwrap();
    assert_eq!(more, Window { hits: 500, resets_at: at(100) }, "an open window keeps its end");
    assert_eq!(counters.peek(counter, at(60)).await.unwrap(), Some(more), "a peek counts nothing");
    assert_eq!(counters.peek(counter, at(100)).await.unwrap(), None, "closed at its end");
    assert_eq!(
        counters.add(counter, 7, at(100), at(200)).await.unwrap(),
        Window { hits: 7, resets_at: at(200) }
    );

    let adds: Vec<_> = (0..20)
        .map(|_| {
            let counters = Arc::clone(&stores.counters);
            tokio::spawn(async move { counters.add(counter, 5, at(101), at(300)).await })
        })
        .collect();
    for add in adds {
        add.await.unwrap().unwrap();
    }
    assert_eq!(counters.peek(counter, at(102)).await.unwrap().map(|w| w.hits), Some(107), "no add is lost");
    counters.reset(counter).await.unwrap();
    assert_eq!(counters.peek(counter, at(102)).await.unwrap(), None);
}

pub async fn leases_are_held_until_released_or_expired(stores: Stores) {
    let user = UserId::generate();
    let counter = Counter::TurnsInFlight(user);
    let minute = Duration::from_secs(60);
    let leases = &stores.counters;
    assert!(leases.lease(counter, "a", at(0), minute, 2).await.unwrap());
    assert!(leases.lease(counter, "b", at(1), minute, 2).await.unwrap());
    assert!(!leases.lease(counter, "c", at(2), minute, 2).await.unwrap(), "two are held");
    assert!(leases.lease(counter, "a", at(3), minute, 2).await.unwrap(), "a holder renews its own");
    let other = Counter::TurnsInFlight(UserId::generate());
    assert!(leases.lease(other, "c", at(3), minute, 2).await.unwrap(), "counters are apart");
    assert!(!leases.lease(Counter::TurnsInFlight(user), "c", at(3), minute, 2).await.unwrap());

    leases.release(counter, "b").await.unwrap();
    leases.release(counter, "b").await.unwrap();
    leases.release(counter, "never").await.unwrap();
    assert!(leases.lease(counter, "c", at(4), minute, 2).await.unwrap(), "b's place is free");
    assert!(!leases.lease(counter, "d", at(5), minute, 2).await.unwrap());
    // c's lease (from 4 s) is live at 62 s; a's, renewed at 3 s, has expired.
    assert!(leases.lease(counter, "d", at(63), minute, 2).await.unwrap(), "a's lease ended by itself");
    assert!(!leases.lease(counter, "e", at(63), minute, 2).await.unwrap());
}

pub async fn parallel_leases_admit_exactly_max(stores: Stores) {
    let counter_of = UserId::generate();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let counters = Arc::clone(&stores.counters);
            tokio::spawn(async move {
                let counter = Counter::TurnsInFlight(counter_of);
                counters
                    .lease(counter, &format!("turn {i}"), at(0), Duration::from_secs(60), 3)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut held = 0;
    for task in tasks {
        held += usize::from(task.await.unwrap());
    }
    assert_eq!(held, 3);
}

pub async fn a_started_dialogue_is_a_one_message_list(stores: Stores) {
    let owner = UserId::generate();
    let head = stores
        .dialogues
        .start_dialogue(owner, said(Role::User, "  Where do I start?  ", at(5)))
        .await
        .unwrap();

    assert_eq!(head.dialogue_id, DialogueId::from(head.id));
    assert_eq!((head.seq, head.prev_id, head.next_id), (1, None, None));
    assert_eq!(head.content, "  Where do I start?  ", "content is kept as written");
    assert_eq!(whole(&stores, owner, head.dialogue_id).await, vec![head.clone()]);

    let listed = stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let summary = &listed.items[0];
    assert_eq!(
        (summary.id, summary.title.as_str(), summary.message_count),
        (head.dialogue_id, "Where do I start?", 1)
    );
    assert_eq!((summary.created_at, summary.updated_at, summary.tail_id), (at(5), at(5), head.id));
}

pub async fn appends_keep_the_list_valid_and_the_summary_current(stores: Stores) {
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 6, 0).await;

    let messages = whole(&stores, owner, dialogue).await;
    assert_eq!(check_chain(&messages), Ok(()));
    let texts: Vec<_> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["message 1", "message 2", "message 3", "message 4", "message 5", "message 6"]);
    assert_eq!(messages[1].role, Role::Assistant);

    let summary =
        stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap().items.remove(0);
    assert_eq!((summary.message_count, summary.tail_id), (6, messages[5].id));
    assert_eq!((summary.created_at, summary.updated_at), (at(0), at(6)));
    assert_eq!(summary.title, "message 1");
    assert_audit_clean(&stores, 1, 6).await;
}

pub async fn concurrent_appends_all_land_in_one_list(stores: Stores) {
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 1, 0).await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let dialogues = Arc::clone(&stores.dialogues);
            let message = said(Role::User, &format!("racer {i}"), at(1));
            let id = message.id;
            (id, tokio::spawn(async move { dialogues.append_message(owner, dialogue, message).await }))
        })
        .collect();
    let mut expected = HashSet::new();
    for (id, task) in tasks {
        assert_eq!(task.await.unwrap().unwrap().id, id);
        expected.insert(id);
    }

    let messages = whole(&stores, owner, dialogue).await;
    assert_eq!(messages.len(), 31);
    assert_eq!(check_chain(&messages), Ok(()));
    let landed: HashSet<_> = messages[1..].iter().map(|m| m.id).collect();
    assert_eq!(landed, expected);
    assert_audit_clean(&stores, 1, 31).await;
}

pub async fn someone_elses_or_an_unknown_dialogue_is_not_found(stores: Stores) {
    let owner = UserId::generate();
    let stranger = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 2, 0).await;
    let unknown = DialogueId::generate();

    for (who, which) in [(stranger, dialogue), (owner, unknown)] {
        let appended = stores.dialogues.append_message(who, which, said(Role::User, "hi", at(9))).await;
        assert!(matches!(appended, Err(StoreError::NotFound)), "{appended:?}");
        let page = stores.dialogues.messages(who, which, Limit::new_clamped(5, 5), None).await;
        assert!(matches!(page, Err(StoreError::NotFound)), "{page:?}");
        let memory = stores.dialogues.messages_before(who, which, 3, 5).await;
        assert!(matches!(memory, Err(StoreError::NotFound)), "{memory:?}");
    }
    assert_eq!(whole(&stores, owner, dialogue).await.len(), 2, "the failed append left nothing behind");
}

pub async fn messages_page_in_list_order(stores: Stores) {
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 7, 0).await;
    let limit = Limit::new_clamped(3, 200);

    let mut seqs = Vec::new();
    let mut cursor: Option<MessageCursor> = None;
    let mut pages = 0;
    loop {
        let page = stores.dialogues.messages(owner, dialogue, limit, cursor).await.unwrap();
        pages += 1;
        seqs.extend(page.items.iter().map(|m| m.seq));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(pages, 3);

    let exact = stores.dialogues.messages(owner, dialogue, Limit::new_clamped(7, 200), None).await.unwrap();
    assert_eq!((exact.items.len(), exact.next), (7, None), "no cursor when nothing follows");
    let beyond = stores
        .dialogues
        .messages(owner, dialogue, limit, Some(MessageCursor { after_seq: 7 }))
        .await
        .unwrap();
    assert!(beyond.items.is_empty() && beyond.next.is_none());
}

pub async fn messages_before_gives_the_latest_ones_oldest_first(stores: Stores) {
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 10, 0).await;
    let seqs = |messages: Vec<Message>| messages.iter().map(|m| m.seq).collect::<Vec<_>>();

    assert_eq!(seqs(stores.dialogues.messages_before(owner, dialogue, 10, 4).await.unwrap()), [6, 7, 8, 9]);
    assert_eq!(seqs(stores.dialogues.messages_before(owner, dialogue, 3, 20).await.unwrap()), [1, 2]);
    assert_eq!(
        seqs(stores.dialogues.messages_before(owner, dialogue, 1, 20).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(stores.dialogues.messages_before(owner, dialogue, 11, 0).await.unwrap()),
        Vec::<u64>::new()
    );
    // Past the end: the last ones (how a reader opens a dialogue at its end).
    assert_eq!(seqs(stores.dialogues.messages_before(owner, dialogue, 500, 3).await.unwrap()), [8, 9, 10]);
    assert_eq!(seqs(stores.dialogues.messages_before(owner, dialogue, u64::MAX, 2).await.unwrap()), [9, 10]);
    let stranger = UserId::generate();
    assert!(matches!(
        stores.dialogues.messages_before(stranger, dialogue, 500, 3).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn dialogues_are_listed_newest_activity_first_in_pages(stores: Stores) {
    let owner = UserId::generate();
    let first = dialogue_of(&stores, owner, 1, 0).await;
    let second = dialogue_of(&stores, owner, 1, 10).await;
    let third = dialogue_of(&stores, owner, 1, 20).await;
    // Activity in the oldest dialogue moves it to the top.
    stores.dialogues.append_message(owner, first, said(Role::Assistant, "later", at(30))).await.unwrap();

    let limit = Limit::new_clamped(2, 100);
    let one = stores.dialogues.dialogues(owner, limit, None).await.unwrap();
    let ids: Vec<_> = one.items.iter().map(|d| d.id).collect();
    assert_eq!(ids, [first, third]);
    let two = stores.dialogues.dialogues(owner, limit, one.next).await.unwrap();
    let ids: Vec<_> = two.items.iter().map(|d| d.id).collect();
    assert_eq!(ids, [second]);
    assert_eq!(two.next, None);
    assert_eq!(one.items[0].message_count, 2);
    // The moved dialogue is listed once, under its new activity.
    assert_audit_clean(&stores, 3, 4).await;
}

pub async fn dialogues_are_private_to_their_owner(stores: Stores) {
    let ada = UserId::generate();
    let bob = UserId::generate();
    dialogue_of(&stores, ada, 2, 0).await;
    let bobs = dialogue_of(&stores, bob, 1, 5).await;

    let listed = stores.dialogues.dialogues(bob, Limit::new_clamped(100, 100), None).await.unwrap();
    assert_eq!(listed.items.iter().map(|d| d.id).collect::<Vec<_>>(), [bobs]);
    let nobody =
        stores.dialogues.dialogues(UserId::generate(), Limit::new_clamped(100, 100), None).await.unwrap();
    assert!(nobody.items.is_empty() && nobody.next.is_none());
}

/// Pages of long messages end at [`PAGE_BYTES`] with a cursor, and every read goes on past
/// DynamoDB's 1 MB per response: 20 dialogues of 16,000 emoji each once listed 17, and their
/// messages 33 of 40, with no cursor to the rest.
pub async fn pages_of_large_messages_reach_every_message(stores: Stores) {
    let owner = UserId::generate();
    let long = "🦀".repeat(16_000);
    let mut dialogues = Vec::new();
    for k in 0..20 {
        let head = stores.dialogues.start_dialogue(owner, said(Role::User, &long, at(k))).await.unwrap();
        dialogues.push(head.dialogue_id);
    }
    let dialogue = dialogues[0];
    for k in 2..=40 {
        let role = if k % 2 == 0 { Role::Assistant } else { Role::User };
        stores.dialogues.append_message(owner, dialogue, said(role, &long, at(100 + k))).await.unwrap();
    }

    let mut seqs = Vec::new();
    let mut cursor = None;
    loop {
        let page =
            stores.dialogues.messages(owner, dialogue, Limit::new_clamped(200, 200), cursor).await.unwrap();
        let bytes: usize = page.items.iter().map(|m| m.content.len()).sum();
        assert!(bytes <= PAGE_BYTES, "a page of {} messages holds {bytes} bytes", page.items.len());
        assert!(!page.items.is_empty(), "a cursor led to an empty page");
        seqs.extend(page.items.iter().map(|m| m.seq));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    let memory = stores.dialogues.messages_before(owner, dialogue, 41, 40).await.unwrap();
    assert_eq!(memory.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>());
    assert!(memory.iter().all(|m| m.content == long));

    let listed = stores.dialogues.dialogues(owner, Limit::new_clamped(100, 100), None).await.unwrap();
    assert_eq!(listed.next, None);
    let mut ids: Vec<_> = listed.items.iter().map(|d| d.id).collect();
    ids.sort_unstable();
    dialogues.sort_unstable();
    assert_eq!(ids, dialogues);
    let mut cursor = None;
    let mut walked = 0;
    loop {
        let page = stores.dialogues.dialogues(owner, Limit::new_clamped(7, 100), cursor).await.unwrap();
        walked += page.items.len();
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(walked, 20);
    assert_audit_clean(&stores, 20, 59).await;
}

pub async fn a_renamed_dialogue_keeps_its_place_and_its_list(stores: Stores) {
    let owner = UserId::generate();
    let older = dialogue_of(&stores, owner, 3, 0).await;
    let newer = dialogue_of(&stores, owner, 2, 10).await;
    let before = stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap();

    let renamed =
        stores.dialogues.rename_dialogue(owner, older, "Talking to my critic".into()).await.unwrap();
    assert_eq!(
        (renamed.id, renamed.title.as_str(), renamed.message_count),
        (older, "Talking to my critic", 3)
    );
    let after = stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap();
    let ids = |page: &ifs_domain::Page<ifs_domain::DialogueSummary, _>| {
        page.items.iter().map(|d| d.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(&after), [newer, older], "renaming is not activity");
    assert_eq!(after.items[1], renamed);
    assert_eq!(
        DialogueSummary { title: before.items[1].title.clone(), ..renamed.clone() },
        before.items[1],
        "only the title changed"
    );
    assert_eq!(whole(&stores, owner, older).await.len(), 3);

    for (who, which) in [(UserId::generate(), older), (owner, DialogueId::generate())] {
        let refused = stores.dialogues.rename_dialogue(who, which, "mine now".into()).await;
        assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    }
    let listed = stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap();
    assert_eq!(listed.items[1].title, "Talking to my critic");
    assert_audit_clean(&stores, 2, 5).await;
}

pub async fn a_rename_racing_ten_appends_loses_none_of_them(stores: Stores) {
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 1, 0).await;
    let appends: Vec<_> = (0..10)
        .map(|i| {
            let dialogues = Arc::clone(&stores.dialogues);
            let message = said(Role::User, &format!("racer {i}"), at(1 + i));
            tokio::spawn(async move { dialogues.append_message(owner, dialogue, message).await })
        })
        .collect();
    let dialogues = Arc::clone(&stores.dialogues);
    let rename =
        tokio::spawn(async move { dialogues.rename_dialogue(owner, dialogue, "Renamed".into()).await });
    for append in appends {
        append.await.unwrap().unwrap();
    }
    rename.await.unwrap().unwrap();

    let messages = whole(&stores, owner, dialogue).await;
    assert_eq!(messages.len(), 11);
    assert_eq!(check_chain(&messages), Ok(()));
    let summary =
        stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap().items.remove(0);
    assert_eq!((summary.title.as_str(), summary.message_count), ("Renamed", 11));
    assert_eq!(summary.tail_id, messages[10].id);
    assert_audit_clean(&stores, 1, 11).await;
}

/// What every operation on a deleted `dialogue` must answer.
async fn assert_gone(stores: &Stores, owner: UserId, dialogue: DialogueId) {
    let summary = stores.dialogues.dialogue(owner, dialogue).await;
    assert!(matches!(summary, Err(StoreError::NotFound)), "{summary:?}");
    let page = stores.dialogues.messages(owner, dialogue, Limit::new_clamped(10, 100), None).await;
    assert!(matches!(page, Err(StoreError::NotFound)), "{page:?}");
    let cursor = Some(MessageCursor { after_seq: 2 });
    let later = stores.dialogues.messages(owner, dialogue, Limit::new_clamped(10, 100), cursor).await;
    assert!(matches!(later, Err(StoreError::NotFound)), "a page past the head: {later:?}");
    let appended =
        stores.dialogues.append_message(owner, dialogue, said(Role::User, "still there?", at(99))).await;
    assert!(matches!(appended, Err(StoreError::NotFound)), "{appended:?}");
    let renamed = stores.dialogues.rename_dialogue(owner, dialogue, "again".into()).await;
    assert!(matches!(renamed, Err(StoreError::NotFound)), "{renamed:?}");
    let again = stores.dialogues.delete_dialogue(owner, dialogue).await;
    assert!(matches!(again, Err(StoreError::NotFound)), "{again:?}");
    let listed = stores.dialogues.dialogues(owner, Limit::new_clamped(100, 100), None).await.unwrap();
    assert!(listed.items.iter().all(|d| d.id != dialogue), "still listed");
}

pub async fn a_deleted_dialogue_is_gone_for_everyone(stores: Stores) {
    let owner = UserId::generate();
    // Longer than a page of keys of any store's deletion.
    let long = dialogue_of(&stores, owner, 130, 0).await;
    let short = dialogue_of(&stores, owner, 3, 200).await;
    let kept = dialogue_of(&stores, owner, 2, 300).await;

    for (who, which) in [(UserId::generate(), long), (owner, DialogueId::generate())] {
        let refused = stores.dialogues.delete_dialogue(who, which).await;
        assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    }
    assert_audit_clean(&stores, 3, 135).await;

    stores.dialogues.delete_dialogue(owner, long).await.unwrap();
    stores.dialogues.delete_dialogue(owner, short).await.unwrap();
    assert_gone(&stores, owner, long).await;
    assert_gone(&stores, owner, short).await;
    let listed = stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap();
    assert_eq!(listed.items.iter().map(|d| d.id).collect::<Vec<_>>(), [kept]);
    assert_eq!(whole(&stores, owner, kept).await.len(), 2);
    assert_audit_clean(&stores, 1, 2).await;
}

pub async fn deleting_all_takes_every_dialogue_of_the_owner_and_nothing_else(stores: Stores) {
    let (owner, neighbour) = (UserId::generate(), UserId::generate());
    let mut theirs = Vec::new();
    for i in 0..5 {
        theirs.push(dialogue_of(&stores, owner, 1 + i, 10 * i as i64).await);
    }
    let other = dialogue_of(&stores, neighbour, 3, 100).await;

    assert_eq!(stores.dialogues.delete_dialogues(owner).await.unwrap(), 5);
    for dialogue in theirs {
        assert_gone(&stores, owner, dialogue).await;
    }
    assert!(
        stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap().items.is_empty()
    );
    assert_eq!(whole(&stores, neighbour, other).await.len(), 3);
    assert_eq!(stores.dialogues.delete_dialogues(owner).await.unwrap(), 0, "nothing left to delete");
    // The owner can start again afresh.
    let fresh = dialogue_of(&stores, owner, 2, 500).await;
    assert_eq!(whole(&stores, owner, fresh).await.len(), 2);
    assert_audit_clean(&stores, 2, 5).await;
}

/// Ten appends and `delete` race on a one-message dialogue: every append either landed before
/// the deletion (and went with it) or was told the dialogue is not found.
async fn race_appends_with<F>(stores: &Stores, owner: UserId, dialogue: DialogueId, delete: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let appends: Vec<_> = (0..10)
        .map(|i| {
            let dialogues = Arc::clone(&stores.dialogues);
            let message = said(Role::User, &format!("racer {i}"), at(1 + i));
            tokio::spawn(async move { dialogues.append_message(owner, dialogue, message).await })
        })
        .collect();
    let deletion = tokio::spawn(delete);
    for append in appends {
        match append.await.unwrap() {
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(other) => panic!("an append racing a deletion failed otherwise: {other:?}"),
        }
    }
    deletion.await.unwrap();
    assert_gone(stores, owner, dialogue).await;
}

pub async fn a_delete_racing_ten_appends_leaves_no_orphans(stores: Stores) {
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 1, 0).await;
    let dialogues = Arc::clone(&stores.dialogues);
    race_appends_with(&stores, owner, dialogue, async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        dialogues.delete_dialogue(owner, dialogue).await.unwrap();
    })
    .await;
    assert_audit_clean(&stores, 0, 0).await;
}

pub async fn deleting_all_racing_appends_leaves_no_orphans(stores: Stores) {
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 1, 0).await;
    let other = dialogue_of(&stores, owner, 2, 10).await;
    let dialogues = Arc::clone(&stores.dialogues);
    race_appends_with(&stores, owner, dialogue, async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(dialogues.delete_dialogues(owner).await.unwrap(), 2);
    })
    .await;
    assert_gone(&stores, owner, other).await;
    assert_audit_clean(&stores, 0, 0).await;
}

pub async fn a_fork_copies_up_to_its_message_with_new_ids_and_leaves_the_original(stores: Stores) {
    let owner = UserId::generate();
    let original = dialogue_of(&stores, owner, 5, 0).await;
    let other = dialogue_of(&stores, owner, 2, 100).await;
    stores.dialogues.rename_dialogue(owner, original, "The critic".into()).await.unwrap();
    let before = whole(&stores, owner, original).await;
    let elsewhere = whole(&stores, owner, other).await[1].id;

    let fork = stores.dialogues.fork_dialogue(owner, original, before[2].id).await.unwrap();
    assert_ne!(fork.id, original);
    assert_eq!((fork.title.as_str(), fork.message_count, fork.owner), ("The critic", 3, owner));
    assert_eq!(
        fork.forked_from,
        Some(ifs_domain::ForkOrigin { dialogue_id: original, message_id: before[2].id })
    );
    assert_eq!((fork.created_at, fork.updated_at), (before[0].created_at, before[2].created_at));
    let copies = whole(&stores, owner, fork.id).await;
    assert_eq!(check_chain(&copies), Ok(()));
    assert_eq!(fork.tail_id, copies[2].id);
    let texts = |messages: &[Message]| {
        messages.iter().map(|m| (m.role, m.content.clone(), m.created_at)).collect::<Vec<_>>()
    };
    assert_eq!(texts(&copies), texts(&before[..3]));
    let old_ids: HashSet<MessageId> = before.iter().map(|m| m.id).collect();
    assert!(copies.iter().all(|m| !old_ids.contains(&m.id)), "copies have new ids");
    assert_eq!(whole(&stores, owner, original).await, before, "the original is untouched");

    let listed = stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap();
    let found = listed.items.iter().find(|d| d.id == fork.id).expect("the fork is listed");
    assert_eq!(found, &fork);
    assert_eq!(stores.dialogues.dialogue(owner, fork.id).await.unwrap(), fork);
    let stranger = stores.dialogues.dialogue(UserId::generate(), fork.id).await;
    assert!(matches!(stranger, Err(StoreError::NotFound)), "{stranger:?}");
    // A fork continues like any dialogue.
    let next =
        stores.dialogues.append_message(owner, fork.id, said(Role::User, "edited", at(50))).await.unwrap();
    assert_eq!(next.seq, 4);
    let at_head = stores.dialogues.fork_dialogue(owner, original, before[0].id).await.unwrap();
    assert_eq!(whole(&stores, owner, at_head.id).await.len(), 1);

    for (who, message) in
        [(UserId::generate(), before[2].id), (owner, MessageId::generate()), (owner, elsewhere)]
    {
        let refused = stores.dialogues.fork_dialogue(who, original, message).await;
        assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    }
    assert_audit_clean(&stores, 4, 5 + 2 + 4 + 1).await;
}

pub async fn a_fork_of_a_long_dialogue_is_whole(stores: Stores) {
    let owner = UserId::generate();
    // Longer than a transaction of any store's copy.
    let original = dialogue_of(&stores, owner, 150, 0).await;
    let messages = whole(&stores, owner, original).await;
    let fork = stores.dialogues.fork_dialogue(owner, original, messages[149].id).await.unwrap();
    let copies = whole(&stores, owner, fork.id).await;
    assert_eq!(copies.len(), 150);
    assert_eq!(check_chain(&copies), Ok(()));
    assert_eq!(copies[149].content, "message 150");
    assert_audit_clean(&stores, 2, 300).await;
}

pub async fn a_fork_racing_ten_appends_copies_exactly_its_part(stores: Stores) {
    let owner = UserId::generate();
    let original = dialogue_of(&stores, owner, 3, 0).await;
    let through = whole(&stores, owner, original).await[2].id;
    let appends: Vec<_> = (0..10)
        .map(|i| {
            let dialogues = Arc::clone(&stores.dialogues);
            let message = said(Role::User, &format!("racer {i}"), at(10 + i));
            tokio::spawn(async move { dialogues.append_message(owner, original, message).await })
        })
        .collect();
    let fork = stores.dialogues.fork_dialogue(owner, original, through).await.unwrap();
    for append in appends {
        append.await.unwrap().unwrap();
    }
    let copies = whole(&stores, owner, fork.id).await;
    assert_eq!(
        copies.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(),
        ["message 1", "message 2", "message 3"]
    );
    assert_eq!(check_chain(&copies), Ok(()));
    assert_eq!(whole(&stores, owner, original).await.len(), 13);
    assert_audit_clean(&stores, 2, 16).await;
}

pub async fn a_regenerated_reply_keeps_its_earlier_versions(stores: Stores) {
    use ifs_domain::{REPLY_VERSIONS_MAX, RegenerateRefusal, ReplyMeta};
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 2, 0).await;
    let other = dialogue_of(&stores, owner, 2, 100).await;
    let before = whole(&stores, owner, dialogue).await;
    let reply = before[1].id;

    let again = stores
        .dialogues
        .replace_reply(owner, dialogue, reply, said(Role::Assistant, "said better", at(200)))
        .await
        .unwrap();
    assert_eq!((again.id, again.seq, again.content.as_str()), (reply, 2, "said better"));
    assert_eq!(ReplyMeta::version(again.meta.as_ref()), 2);
    let now = whole(&stores, owner, dialogue).await;
    assert_eq!(now[1], again);
    assert_eq!(now[0], before[0]);
    let versions = stores.dialogues.versions(owner, dialogue, reply).await.unwrap();
    let texts: Vec<_> = versions.iter().map(|v| (v.version, v.content.as_str())).collect();
    assert_eq!(texts, [(1, "message 2"), (2, "said better")]);
    assert_eq!(versions[0].created_at, before[1].created_at);
    let listed = stores.dialogues.dialogues(owner, Limit::new_clamped(10, 100), None).await.unwrap();
    assert_eq!(listed.items[0].id, dialogue, "regenerating is activity");
    assert_eq!(listed.items[0].updated_at, at(200));
    let head = stores.dialogues.versions(owner, dialogue, before[0].id).await.unwrap();
    assert_eq!(head.len(), 1, "a message never regenerated is its only version");

    let refuse = |who: UserId, message: MessageId| {
        let dialogues = Arc::clone(&stores.dialogues);
        async move { dialogues.replace_reply(who, dialogue, message, said(Role::Assistant, "no", at(300))).await }
    };
    assert!(matches!(
        refuse(owner, before[0].id).await,
        Err(StoreError::Regenerate(RegenerateRefusal::NotLastReply))
    ));
    assert!(matches!(refuse(UserId::generate(), reply).await, Err(StoreError::NotFound)));
    for k in 3..=REPLY_VERSIONS_MAX {
        let text = format!("version {k}");
        stores
            .dialogues
            .replace_reply(owner, dialogue, reply, said(Role::Assistant, &text, at(200 + i64::from(k))))
            .await
            .unwrap();
    }
    assert!(matches!(
        refuse(owner, reply).await,
        Err(StoreError::Regenerate(RegenerateRefusal::VersionsFull))
    ));
    assert_eq!(
        stores.dialogues.versions(owner, dialogue, reply).await.unwrap().len(),
        REPLY_VERSIONS_MAX as usize
    );
    let unknown = stores.dialogues.versions(owner, dialogue, MessageId::generate()).await;
    assert!(matches!(unknown, Err(StoreError::NotFound)), "{unknown:?}");

    // Once the user speaks again, the reply is no longer the last; a user's message never is one.
    let asked =
        stores.dialogues.append_message(owner, dialogue, said(Role::User, "and?", at(400))).await.unwrap();
    assert!(matches!(
        refuse(owner, reply).await,
        Err(StoreError::Regenerate(RegenerateRefusal::NotLastReply))
    ));
    assert!(matches!(refuse(owner, asked.id).await, Err(StoreError::Regenerate(RegenerateRefusal::NoReply))));
    assert_audit_clean(&stores, 2, 5).await;

    stores.dialogues.delete_dialogue(owner, dialogue).await.unwrap();
    let gone = stores.dialogues.versions(owner, dialogue, reply).await;
    assert!(matches!(gone, Err(StoreError::NotFound)), "{gone:?}");
    assert_eq!(whole(&stores, owner, other).await.len(), 2);
    assert_audit_clean(&stores, 1, 2).await;
}

pub async fn a_regeneration_racing_ten_appends_lands_first_or_is_refused(stores: Stores) {
    use ifs_domain::RegenerateRefusal;
    let owner = UserId::generate();
    let dialogue = dialogue_of(&stores, owner, 2, 0).await;
    let reply = whole(&stores, owner, dialogue).await[1].id;
    let appends: Vec<_> = (0..10)
        .map(|i| {
            let dialogues = Arc::clone(&stores.dialogues);
            let message = said(Role::User, &format!("racer {i}"), at(10 + i));
            tokio::spawn(async move { dialogues.append_message(owner, dialogue, message).await })
        })
        .collect();
    let regenerated =
        stores.dialogues.replace_reply(owner, dialogue, reply, said(Role::Assistant, "again", at(5))).await;
    for append in appends {
        append.await.unwrap().unwrap();
    }
    let messages = whole(&stores, owner, dialogue).await;
    assert_eq!(messages.len(), 12);
    assert_eq!(check_chain(&messages), Ok(()));
    match regenerated {
        Ok(_) => assert_eq!(messages[1].content, "again"),
        Err(StoreError::Regenerate(RegenerateRefusal::NotLastReply)) => {
            assert_eq!(messages[1].content, "message 2")
        }
        Err(other) => panic!("a regeneration racing appends failed otherwise: {other:?}"),
    }
    assert_audit_clean(&stores, 1, 12).await;
}

pub async fn an_erased_account_leaves_nothing_even_with_ten_appends_racing(stores: Stores) {
    let (ada, bob) = (user("ada"), user("bob"));
    for person in [&ada, &bob] {
        stores.users.create_user(person).await.unwrap();
    }
    let session = |user_id: UserId| Session {
        id: SessionId::generate(),
        user_id,
        created_at: at(0),
        expires_at: at(3600),
    };
    let (first, second, bobs) = (session(ada.id), session(ada.id), session(bob.id));
    for s in [&first, &second, &bobs] {
        stores.sessions.create_session(s).await.unwrap();
    }
    let minute = Duration::from_secs(60);
    let theirs = [dialogue_of(&stores, ada.id, 3, 0).await, dialogue_of(&stores, ada.id, 2, 10).await];
    let kept = dialogue_of(&stores, bob.id, 2, 20).await;
    stores.counters.hit(Counter::LoginAttempts(&ada.email), at(1), minute).await.unwrap();
    stores.counters.hit(Counter::DialogueTurns(ada.id), at(1), minute).await.unwrap();
    stores.counters.add(Counter::TokensToday(ada.id), 500, at(1), at(86_400)).await.unwrap();
    assert!(stores.counters.lease(Counter::TurnsInFlight(ada.id), "turn", at(1), minute, 1).await.unwrap());

    let appends: Vec<_> = (0..10)
        .map(|i| {
            let dialogues = Arc::clone(&stores.dialogues);
            let message = said(Role::User, &format!("racer {i}"), at(30 + i));
            tokio::spawn(async move { dialogues.append_message(ada.id, theirs[0], message).await })
        })
        .collect();
    crate::erase_account(
        stores.users.as_ref(),
        stores.sessions.as_ref(),
        stores.dialogues.as_ref(),
        stores.counters.as_ref(),
        &ada,
    )
    .await
    .unwrap();
    for append in appends {
        match append.await.unwrap() {
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(other) => panic!("an append racing an erasure failed otherwise: {other:?}"),
        }
    }

    assert_eq!(stores.users.user_by_id(ada.id).await.unwrap(), None);
    assert_eq!(stores.users.user_by_email(&ada.email).await.unwrap(), None);
    for s in [&first, &second] {
        assert_eq!(stores.sessions.session(s.id, at(2)).await.unwrap(), None);
    }
    for dialogue in theirs {
        assert_gone(&stores, ada.id, dialogue).await;
    }
    assert_eq!(stores.counters.peek(Counter::TokensToday(ada.id), at(2)).await.unwrap(), None);
    assert_eq!(stores.counters.hit(Counter::LoginAttempts(&ada.email), at(2), minute).await.unwrap().hits, 1);
    assert_eq!(stores.counters.hit(Counter::DialogueTurns(ada.id), at(2), minute).await.unwrap().hits, 1);
    assert!(stores.counters.lease(Counter::TurnsInFlight(ada.id), "other", at(2), minute, 1).await.unwrap());

    // Another person keeps everything; the email is free again.
    assert_eq!(stores.sessions.session(bobs.id, at(2)).await.unwrap(), Some(bobs));
    assert_eq!(whole(&stores, bob.id, kept).await.len(), 2);
    stores.users.create_user(&user("ada")).await.unwrap();
    assert_audit_clean(&stores, 1, 2).await;
}

pub async fn safety_counts_add_up_by_day_level_and_screener_even_in_parallel(stores: Stores) {
    use ifs_domain::SafetyLevel::{Crisis, Elevated, None as Calm};
    let day = |d: u32| chrono::NaiveDate::from_ymd_opt(2026, 12, d).unwrap();
    let safety = stores.safety.clone();
    let parallel: Vec<_> = (0..10)
        .map(|_| {
            let safety = safety.clone();
            tokio::spawn(async move { safety.count_screening(day(2), Crisis, "builtin-1").await.unwrap() })
        })
        .collect();
    for task in parallel {
        task.await.unwrap();
    }
    safety.count_screening(day(1), Calm, "builtin-1").await.unwrap();
    safety.count_screening(day(2), Calm, "builtin-1+classifier").await.unwrap();
    safety.count_screening(day(2), Elevated, "builtin-1").await.unwrap();
    safety.count_screening(day(3), Calm, "builtin-1").await.unwrap();
    let since_two = safety.screenings(day(2)).await.unwrap();
    let seen: Vec<_> = since_two.iter().map(|c| (c.day, c.level, c.screener.as_str(), c.count)).collect();
    assert_eq!(
        seen,
        [
            (day(2), Calm, "builtin-1+classifier", 1),
            (day(2), Elevated, "builtin-1", 1),
            (day(2), Crisis, "builtin-1", 10),
            (day(3), Calm, "builtin-1", 1),
        ]
    );
    assert_eq!(safety.screenings(day(1)).await.unwrap().len(), 5);
    assert!(safety.screenings(day(4)).await.unwrap().is_empty());
    let report = stores.audit.audit().await.unwrap();
    assert!(report.findings.is_empty(), "counts are not dialogues: {:?}", report.findings);
    assert_eq!(report.dialogues, 0);
}

pub async fn a_users_country_is_set_cleared_and_read_back_by_id_and_email(stores: Stores) {
    let ada = user("ada");
    stores.users.create_user(&ada).await.unwrap();
    let germany = ifs_domain::Country::parse("de").unwrap();
    let set = stores.users.set_country(ada.id, Some(germany.clone())).await.unwrap();
    assert_eq!(set.country.as_ref(), Some(&germany));
    assert_eq!(stores.users.user_by_id(ada.id).await.unwrap().unwrap().country, Some(germany.clone()));
    assert_eq!(stores.users.user_by_email(&ada.email).await.unwrap().unwrap().country, Some(germany));
    assert_eq!(stores.users.set_country(ada.id, None).await.unwrap().country, None);
    assert_eq!(stores.users.user_by_id(ada.id).await.unwrap().unwrap().country, None);
    stores.users.delete_user(&ada).await.unwrap();
    assert!(matches!(stores.users.set_country(ada.id, None).await, Err(StoreError::NotFound)));
    assert!(stores.users.user_by_email(&ada.email).await.unwrap().is_none(), "nothing came back");
}
