//! Given/when/then tests of the publication decider, and property tests of its
//! invariants.

use proptest::prelude::*;
use uuid::Uuid;

use super::*;
use crate::Attachment;
use crate::publisher::Scope;
use crate::values::{AttachmentName, ContentType, DepartmentCode, HttpsUrl};

const NOW: i64 = 1_790_000_000_000_000; // 2026-09-21

fn at(offset_seconds: i64) -> Timestamp {
    Timestamp::from_unix_micros(NOW + offset_seconds * 1_000_000)
}

fn now() -> Timestamp {
    at(0)
}

fn code(c: &str) -> InseeCode {
    InseeCode::parse(c).unwrap()
}

fn communes(list: &[&str]) -> CommuneSet {
    CommuneSet::new(list.iter().map(|c| code(c)).collect()).unwrap()
}

fn pub_id() -> PublicationId {
    PublicationId::parse("01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69").unwrap()
}

fn publisher() -> PublisherId {
    PublisherId::new(Uuid::from_u128(1))
}

fn token(n: u128) -> TokenId {
    TokenId::new(Uuid::from_u128(100 + n))
}

/// The town hall of Rennes and Saint-Jacques-de-la-Lande, editor token 1.
fn editor() -> Issuer {
    Issuer {
        publisher: publisher(),
        token: token(1),
        role: Role::Editor,
        scope: Scope::Communes([code("35238"), code("35281")].into()),
    }
}

fn admin() -> Issuer {
    Issuer {
        token: token(2),
        role: Role::Admin,
        ..editor()
    }
}

fn prefecture() -> Issuer {
    Issuer {
        publisher: PublisherId::new(Uuid::from_u128(2)),
        token: token(9),
        role: Role::Admin,
        scope: Scope::Departments([DepartmentCode::parse("35").unwrap()].into()),
    }
}

fn content(list: &[&str]) -> Content {
    Content {
        communes: communes(list),
        title: Title::parse("Coupure d'eau rue des Lilas").unwrap(),
        body: Body::parse("Travaux sur le réseau mardi de 8 h à 12 h.").unwrap(),
        category: Category::Roadworks,
        priority: Priority::Normal,
        window: VisibilityWindow::default(),
        attachments: Attachments::default(),
    }
}

fn published(list: &[&str]) -> PublicationEvent {
    PublicationEvent::Published(PublicationPublished {
        id: pub_id(),
        publisher: publisher(),
        author: token(1),
        content: content(list),
        notify: true,
        published_at: at(-3600),
    })
}

fn scheduled(publish_in: i64) -> PublicationEvent {
    PublicationEvent::Scheduled(PublicationScheduled {
        id: pub_id(),
        publisher: publisher(),
        author: token(1),
        content: content(&["35238"]),
        notify: true,
        publish_at: at(publish_in),
        scheduled_at: at(-60),
    })
}

fn retracted() -> PublicationEvent {
    PublicationEvent::Retracted(PublicationRetracted {
        id: pub_id(),
        at: at(-10),
    })
}

#[track_caller]
fn given(events: &[PublicationEvent]) -> Publication {
    events.iter().fold(Publication::Absent, evolve)
}

#[track_caller]
fn then_events(state: &Publication, command: Command, expected: Vec<PublicationEvent>) {
    assert_eq!(decide(state, command, now()), Ok(expected));
}

#[track_caller]
fn then_error(state: &Publication, command: Command, expected: PublicationError) {
    assert_eq!(decide(state, command, now()), Err(expected));
}

fn amend(issuer: Issuer, amendment: Amendment) -> Command {
    Command::Amend { issuer, amendment }
}

// --- publish -------------------------------------------------------------------

#[test]
fn publishing_to_communes_in_scope_records_a_publication() {
    then_events(
        &given(&[]),
        Command::Publish {
            id: pub_id(),
            issuer: editor(),
            content: content(&["35238", "35281"]),
            notify: true,
        },
        vec![PublicationEvent::Published(PublicationPublished {
            id: pub_id(),
            publisher: publisher(),
            author: token(1),
            content: content(&["35238", "35281"]),
            notify: true,
            published_at: now(),
        })],
    );
}

#[test]
fn publishing_outside_the_scope_names_the_communes_refused() {
    then_error(
        &given(&[]),
        Command::Publish {
            id: pub_id(),
            issuer: editor(),
            content: content(&["35238", "35047", "29019"]),
            notify: true,
        },
        PublicationError::OutOfScope {
            communes: vec![code("29019"), code("35047")],
        },
    );
}

#[test]
fn a_prefecture_publishes_to_any_commune_of_its_department() {
    let state = given(&[]);
    let events = decide(
        &state,
        Command::Publish {
            id: pub_id(),
            issuer: prefecture(),
            content: content(&["35238", "35047", "35360"]),
            notify: true,
        },
        now(),
    )
    .unwrap();
    assert_eq!(events.len(), 1);
    then_error(
        &state,
        Command::Publish {
            id: pub_id(),
            issuer: prefecture(),
            content: content(&["35238", "56260"]),
            notify: true,
        },
        PublicationError::OutOfScope {
            communes: vec![code("56260")],
        },
    );
}

#[test]
fn publishing_twice_with_the_same_id_is_refused() {
    then_error(
        &given(&[published(&["35238"])]),
        Command::Publish {
            id: pub_id(),
            issuer: editor(),
            content: content(&["35238"]),
            notify: true,
        },
        PublicationError::AlreadyExists,
    );
}

#[test]
fn publishing_with_a_window_already_over_is_refused() {
    let mut c = content(&["35238"]);
    c.window = VisibilityWindow::new(Some(at(-7200)), Some(at(-1))).unwrap();
    then_error(
        &given(&[]),
        Command::Publish {
            id: pub_id(),
            issuer: editor(),
            content: c,
            notify: true,
        },
        PublicationError::VisibleUntilPassed,
    );
}

// --- schedule ------------------------------------------------------------------

#[test]
fn scheduling_in_the_future_records_the_time_it_goes_live() {
    then_events(
        &given(&[]),
        Command::Schedule {
            id: pub_id(),
            issuer: editor(),
            content: content(&["35238"]),
            notify: false,
            publish_at: at(3600),
        },
        vec![PublicationEvent::Scheduled(PublicationScheduled {
            id: pub_id(),
            publisher: publisher(),
            author: token(1),
            content: content(&["35238"]),
            notify: false,
            publish_at: at(3600),
            scheduled_at: now(),
        })],
    );
}

#[test]
fn scheduling_in_the_past_is_refused() {
    then_error(
        &given(&[]),
        Command::Schedule {
            id: pub_id(),
            issuer: editor(),
            content: content(&["35238"]),
            notify: true,
            publish_at: now(),
        },
        PublicationError::PublishAtNotInFuture,
    );
}

#[test]
fn a_scheduled_window_must_end_after_publish_at() {
    let mut c = content(&["35238"]);
    c.window = VisibilityWindow::new(None, Some(at(60))).unwrap();
    then_error(
        &given(&[]),
        Command::Schedule {
            id: pub_id(),
            issuer: editor(),
            content: c,
            notify: true,
            publish_at: at(120),
        },
        PublicationError::WindowEndsBeforeStart,
    );
}

// --- go live -------------------------------------------------------------------

#[test]
fn a_due_scheduled_publication_goes_live() {
    then_events(
        &given(&[scheduled(-1)]),
        Command::GoLive,
        vec![PublicationEvent::WentLive(PublicationWentLive {
            id: pub_id(),
            at: now(),
        })],
    );
}

#[test]
fn a_scheduled_publication_does_not_go_live_early() {
    then_error(
        &given(&[scheduled(30)]),
        Command::GoLive,
        PublicationError::NotDue,
    );
}

#[test]
fn a_live_publication_does_not_go_live_again() {
    then_error(
        &given(&[published(&["35238"])]),
        Command::GoLive,
        PublicationError::AlreadyLive,
    );
}

#[test]
fn going_live_keeps_publish_at_as_the_publication_time() {
    let state = given(&[
        scheduled(-5),
        PublicationEvent::WentLive(PublicationWentLive {
            id: pub_id(),
            at: now(),
        }),
    ]);
    assert_eq!(
        state.state().unwrap().status,
        Status::Live {
            published_at: at(-5)
        }
    );
    assert_eq!(state.version(), 2);
}

// --- amend ---------------------------------------------------------------------

#[test]
fn amending_records_only_the_fields_that_change() {
    let title = Title::parse("Coupure d'eau reportée").unwrap();
    then_events(
        &given(&[published(&["35238"])]),
        amend(
            editor(),
            Amendment {
                title: Some(title.clone()),
                category: Some(Category::Roadworks), // unchanged: dropped
                ..Amendment::default()
            },
        ),
        vec![PublicationEvent::Amended(PublicationAmended {
            id: pub_id(),
            changes: Amendment {
                title: Some(title),
                ..Amendment::default()
            },
            at: now(),
        })],
    );
}

#[test]
fn an_amendment_that_changes_nothing_is_refused() {
    then_error(
        &given(&[published(&["35238"])]),
        amend(
            editor(),
            Amendment {
                priority: Some(Priority::Normal),
                ..Amendment::default()
            },
        ),
        PublicationError::NothingToAmend,
    );
}

#[test]
fn amending_the_communes_outside_the_scope_is_refused() {
    then_error(
        &given(&[published(&["35238"])]),
        amend(
            editor(),
            Amendment {
                communes: Some(communes(&["35238", "35047"])),
                ..Amendment::default()
            },
        ),
        PublicationError::OutOfScope {
            communes: vec![code("35047")],
        },
    );
}

#[test]
fn another_publisher_cannot_amend() {
    then_error(
        &given(&[published(&["35238"])]),
        amend(
            prefecture(),
            Amendment {
                priority: Some(Priority::Urgent),
                ..Amendment::default()
            },
        ),
        PublicationError::NotOwner,
    );
}

#[test]
fn an_editor_changes_only_what_their_token_published_but_an_admin_may() {
    let state = given(&[published(&["35238"])]);
    let urgent = Amendment {
        priority: Some(Priority::Urgent),
        ..Amendment::default()
    };
    let other_editor = Issuer {
        token: token(3),
        ..editor()
    };
    then_error(
        &state,
        amend(other_editor, urgent.clone()),
        PublicationError::EditorMayOnlyChangeOwn,
    );
    assert!(decide(&state, amend(admin(), urgent), now()).is_ok());
}

#[test]
fn amending_the_window_keeps_it_valid() {
    let state = given(&[published(&["35238"])]);
    then_error(
        &state,
        amend(
            editor(),
            Amendment {
                visible_from: Some(Some(at(600))),
                visible_until: Some(Some(at(300))),
                ..Amendment::default()
            },
        ),
        PublicationError::WindowEndsBeforeStart,
    );
    then_error(
        &state,
        amend(
            editor(),
            Amendment {
                visible_until: Some(Some(at(-1))),
                ..Amendment::default()
            },
        ),
        PublicationError::VisibleUntilPassed,
    );
}

#[test]
fn publish_at_moves_only_while_scheduled() {
    let later = Amendment {
        publish_at: Some(at(7200)),
        ..Amendment::default()
    };
    assert!(
        decide(
            &given(&[scheduled(3600)]),
            amend(editor(), later.clone()),
            now()
        )
        .is_ok()
    );
    then_error(
        &given(&[published(&["35238"])]),
        amend(editor(), later),
        PublicationError::AlreadyLive,
    );
}

#[test]
fn amending_an_unknown_publication_is_not_found() {
    then_error(
        &given(&[]),
        amend(
            editor(),
            Amendment {
                priority: Some(Priority::Urgent),
                ..Amendment::default()
            },
        ),
        PublicationError::NotFound,
    );
}

// --- retract -------------------------------------------------------------------

#[test]
fn retracting_records_when() {
    then_events(
        &given(&[published(&["35238"])]),
        Command::Retract { issuer: editor() },
        vec![PublicationEvent::Retracted(PublicationRetracted {
            id: pub_id(),
            at: now(),
        })],
    );
}

#[test]
fn retracting_twice_is_gone() {
    then_error(
        &given(&[published(&["35238"]), retracted()]),
        Command::Retract { issuer: editor() },
        PublicationError::AlreadyRetracted,
    );
}

#[test]
fn a_scheduled_publication_can_be_retracted_before_it_goes_live() {
    let state = given(&[scheduled(3600), retracted()]);
    then_error(&state, Command::GoLive, PublicationError::AlreadyRetracted);
}

#[test]
fn evolve_counts_versions_and_keeps_attachments() {
    let mut c = content(&["35238"]);
    c.attachments = Attachments::new(vec![Attachment {
        url: HttpsUrl::parse("https://rennes.example.fr/arrete.pdf").unwrap(),
        name: AttachmentName::parse("Arrêté.pdf").unwrap(),
        content_type: ContentType::parse("application/pdf").unwrap(),
    }])
    .unwrap();
    let state = given(&[
        PublicationEvent::Published(PublicationPublished {
            id: pub_id(),
            publisher: publisher(),
            author: token(1),
            content: c.clone(),
            notify: true,
            published_at: now(),
        }),
        PublicationEvent::Amended(PublicationAmended {
            id: pub_id(),
            changes: Amendment {
                priority: Some(Priority::Urgent),
                ..Amendment::default()
            },
            at: at(5),
        }),
    ]);
    let current = state.state().unwrap();
    assert_eq!(current.version, 2);
    assert_eq!(current.content.attachments, c.attachments);
    assert_eq!(current.content.priority, Priority::Urgent);
    assert_eq!(current.updated_at, Some(at(5)));
}

// --- properties ----------------------------------------------------------------

/// Communes from two departments, so scopes and amendments overlap often.
const POOL: [&str; 8] = [
    "35238", "35281", "35047", "35360", "29019", "29232", "2A004", "97411",
];

fn commune_set() -> impl Strategy<Value = CommuneSet> {
    proptest::sample::subsequence(POOL.to_vec(), 1..=POOL.len()).prop_map(|list| communes(&list))
}

fn scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        proptest::sample::subsequence(POOL.to_vec(), 0..=POOL.len())
            .prop_map(|l| Scope::Communes(l.iter().map(|c| code(c)).collect())),
        proptest::sample::subsequence(vec!["35", "29", "2A", "974"], 0..=4).prop_map(|l| {
            Scope::Departments(
                l.iter()
                    .map(|d| DepartmentCode::parse(d).unwrap())
                    .collect(),
            )
        }),
    ]
}

fn issuer() -> impl Strategy<Value = Issuer> {
    (scope(), any::<bool>(), 1u128..3, any::<bool>()).prop_map(
        |(scope, is_admin, tok, same_publisher)| Issuer {
            publisher: if same_publisher {
                publisher()
            } else {
                PublisherId::new(Uuid::from_u128(7))
            },
            token: token(tok),
            role: if is_admin { Role::Admin } else { Role::Editor },
            scope,
        },
    )
}

fn amendment() -> impl Strategy<Value = Amendment> {
    (
        proptest::option::of(commune_set()),
        any::<bool>(),
        proptest::option::of(prop_oneof![Just(Priority::Normal), Just(Priority::Urgent)]),
        proptest::option::of(proptest::option::of(-100i64..100_000)),
        proptest::option::of(0i64..100_000),
    )
        .prop_map(
            |(communes, retitle, priority, until, publish_at)| Amendment {
                communes,
                title: retitle.then(|| Title::parse("Nouveau titre").unwrap()),
                priority,
                visible_until: until.map(|u| u.map(at)),
                publish_at: publish_at.map(at),
                ..Amendment::default()
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (issuer(), commune_set()).prop_map(|(issuer, c)| Command::Publish {
            id: pub_id(),
            issuer,
            content: Content {
                communes: c,
                ..content(&["35238"])
            },
            notify: true,
        }),
        (issuer(), commune_set(), 1i64..10_000).prop_map(|(issuer, c, s)| Command::Schedule {
            id: pub_id(),
            issuer,
            content: Content {
                communes: c,
                ..content(&["35238"])
            },
            notify: true,
            publish_at: at(s),
        }),
        Just(Command::GoLive),
        (issuer(), amendment())
            .prop_map(|(issuer, amendment)| Command::Amend { issuer, amendment }),
        issuer().prop_map(|issuer| Command::Retract { issuer }),
    ]
}

/// Runs commands in order, time advancing, keeping the events `decide` accepts.
fn run(commands: Vec<(Command, i64)>) -> (Publication, Vec<PublicationEvent>) {
    let mut state = Publication::Absent;
    let mut log = Vec::new();
    let mut clock = 0;
    for (command, step) in commands {
        clock += step;
        if let Ok(events) = decide(&state, command, at(clock)) {
            for event in events {
                state = evolve(state, &event);
                log.push(event);
            }
        }
    }
    (state, log)
}

proptest! {
    #[test]
    fn a_retracted_publication_accepts_nothing(
        history in proptest::collection::vec((command(), 0i64..5_000), 0..8),
        afterwards in proptest::collection::vec(command(), 1..8),
    ) {
        let mut history = history;
        // Whatever happened before, make sure it exists and its owner retracts it.
        history.insert(0, (Command::Publish {
            id: pub_id(), issuer: admin(), content: content(&["35238"]), notify: true,
        }, 0));
        history.push((Command::Retract { issuer: admin() }, 1));
        let (state, _) = run(history);
        let is_retracted = matches!(state.state().map(|s| s.status), Some(Status::Retracted { .. }));
        prop_assert!(is_retracted);
        for command in afterwards {
            prop_assert!(decide(&state, command, at(1_000_000)).is_err());
        }
    }

    #[test]
    fn amend_never_changes_communes_outside_the_issuers_scope(
        initial in commune_set(),
        issuer in issuer(),
        amendment in amendment(),
    ) {
        let state = given(&[PublicationEvent::Published(PublicationPublished {
            id: pub_id(),
            publisher: publisher(),
            author: token(1),
            content: Content { communes: initial.clone(), ..content(&["35238"]) },
            notify: true,
            published_at: now(),
        })]);
        if let Ok(events) = decide(&state, amend(issuer.clone(), amendment), now()) {
            let after = events.iter().fold(state, evolve);
            let after = &after.state().unwrap().content.communes;
            for c in POOL.iter().map(|c| code(c)).filter(|c| !issuer.scope.contains(c)) {
                prop_assert_eq!(initial.contains(&c), after.contains(&c), "commune {} changed", c);
            }
        }
    }

    #[test]
    fn the_version_counts_every_accepted_event_and_windows_stay_valid(
        history in proptest::collection::vec((command(), 0i64..5_000), 0..12),
    ) {
        let (state, log) = run(history);
        prop_assert_eq!(state.version(), log.len() as u64);
        if let Some(current) = state.state() {
            let w = current.content.window;
            if let (Some(from), Some(until)) = (w.from(), w.until()) {
                prop_assert!(until > from);
            }
        }
    }

    #[test]
    fn only_the_owning_publisher_changes_a_publication(
        issuer in issuer(),
        amendment in amendment(),
    ) {
        let state = given(&[published(&["35238"])]);
        let foreign = issuer.publisher != publisher();
        if foreign {
            prop_assert_eq!(
                decide(&state, amend(issuer.clone(), amendment), now()),
                Err(PublicationError::NotOwner)
            );
            prop_assert_eq!(
                decide(&state, Command::Retract { issuer }, now()),
                Err(PublicationError::NotOwner)
            );
        }
    }
}
