//! The feed fold: ordering, visibility, multi-commune publications, amendments,
//! retractions, and the property that only the set of events matters.

use panneau_domain::{
    Actor, Amendment, Attachments, Body, Category, CommuneSet, Content, Envelope, EventId,
    PublicationAmended, PublicationPublished, PublicationRetracted, PublicationScheduled,
    PublicationWentLive, PublisherId, StreamId, Title, TokenId, VisibilityWindow,
};
use proptest::prelude::*;
use uuid::Uuid;

use super::*;

const T0: i64 = 1_790_000_000_000_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_micros(T0 + seconds * 1_000_000)
}

fn code(c: &str) -> InseeCode {
    InseeCode::parse(c).unwrap()
}

fn pid(n: u16) -> PublicationId {
    PublicationId::parse(&format!("01936f5e-{n:04x}-7c3b-9a6e-3f1d2c4b5a69")).unwrap()
}

fn content(communes: &[&str], priority: Priority) -> Content {
    Content {
        communes: CommuneSet::new(communes.iter().map(|c| code(c)).collect()).unwrap(),
        title: Title::parse("Marché de Noël").unwrap(),
        body: Body::parse("Place de la mairie, samedi de 10 h à 18 h.").unwrap(),
        category: Category::Event,
        priority,
        window: VisibilityWindow::default(),
        attachments: Attachments::default(),
    }
}

fn envelope(
    id: PublicationId,
    version: u64,
    when: i64,
    payload: PublicationEvent,
) -> Envelope<PublicationEvent> {
    Envelope {
        event_id: EventId::new(Uuid::now_v7()),
        stream_id: StreamId::publication(id),
        stream_version: version,
        event_type: payload.event_type(),
        schema_version: payload.schema_version(),
        occurred_at: at(when),
        recorded_at: at(when),
        actor: Actor::System {
            component: "test".into(),
        },
        request_id: None,
        payload,
    }
}

fn publish(n: u16, when: i64, communes: &[&str], priority: Priority) -> Envelope<PublicationEvent> {
    publish_content(n, when, content(communes, priority))
}

fn publish_content(n: u16, when: i64, content: Content) -> Envelope<PublicationEvent> {
    envelope(
        pid(n),
        1,
        when,
        PublicationEvent::Published(PublicationPublished {
            id: pid(n),
            publisher: PublisherId::new(Uuid::from_u128(1)),
            author: TokenId::new(Uuid::from_u128(2)),
            content,
            notify: true,
            published_at: at(when),
        }),
    )
}

fn amend(n: u16, version: u64, when: i64, changes: Amendment) -> Envelope<PublicationEvent> {
    envelope(
        pid(n),
        version,
        when,
        PublicationEvent::Amended(PublicationAmended {
            id: pid(n),
            changes,
            at: at(when),
        }),
    )
}

fn retract(n: u16, version: u64, when: i64) -> Envelope<PublicationEvent> {
    envelope(
        pid(n),
        version,
        when,
        PublicationEvent::Retracted(PublicationRetracted {
            id: pid(n),
            at: at(when),
        }),
    )
}

fn fold(events: &[Envelope<PublicationEvent>]) -> FeedProjection {
    let mut projection = FeedProjection::default();
    for e in events {
        projection.apply(e).unwrap();
    }
    projection
}

fn visible(projection: &FeedProjection, commune: &str, now: i64) -> Vec<PublicationId> {
    projection
        .feed(&code(commune))
        .map(|doc| {
            doc.visible_after(at(now), None)
                .map(|e| e.view.id)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn urgent_alerts_come_first_then_newest_first() {
    let p = fold(&[
        publish(1, 0, &["35238"], Priority::Normal),
        publish(2, 10, &["35238"], Priority::Urgent),
        publish(3, 20, &["35238"], Priority::Normal),
        publish(4, 5, &["35238"], Priority::Urgent),
    ]);
    assert_eq!(visible(&p, "35238", 30), [pid(2), pid(4), pid(3), pid(1)]);
}

#[test]
fn a_multi_commune_publication_is_on_every_board_it_targets() {
    let p = fold(&[publish(1, 0, &["35238", "35047"], Priority::Normal)]);
    assert_eq!(visible(&p, "35238", 1), [pid(1)]);
    assert_eq!(visible(&p, "35047", 1), [pid(1)]);
    assert!(visible(&p, "29019", 1).is_empty());
}

#[test]
fn the_visibility_window_is_respected() {
    let mut c = content(&["35238"], Priority::Normal);
    c.window = VisibilityWindow::new(Some(at(100)), Some(at(200))).unwrap();
    let p = fold(&[publish_content(1, 0, c)]);
    let doc = p.feed(&code("35238")).unwrap();
    assert!(visible(&p, "35238", 99).is_empty());
    assert_eq!(visible(&p, "35238", 100), [pid(1)]);
    assert!(visible(&p, "35238", 200).is_empty());
    assert_eq!(doc.next_change_after(at(0)), Some(at(100)));
    assert_eq!(doc.next_change_after(at(100)), Some(at(200)));
    assert_eq!(doc.next_change_after(at(200)), None);
}

#[test]
fn a_scheduled_publication_shows_from_its_publish_at() {
    let id = pid(1);
    let p = fold(&[envelope(
        id,
        1,
        0,
        PublicationEvent::Scheduled(PublicationScheduled {
            id,
            publisher: PublisherId::new(Uuid::from_u128(1)),
            author: TokenId::new(Uuid::from_u128(2)),
            content: content(&["35238"], Priority::Normal),
            notify: true,
            publish_at: at(60),
            scheduled_at: at(0),
        }),
    )]);
    assert!(visible(&p, "35238", 59).is_empty());
    assert_eq!(visible(&p, "35238", 60), [id]);
    let p2 = {
        let mut p2 = p.clone();
        p2.apply(&envelope(
            id,
            2,
            61,
            PublicationEvent::WentLive(PublicationWentLive { id, at: at(61) }),
        ))
        .unwrap();
        p2
    };
    let entry = &p2.feed(&code("35238")).unwrap().entries()[0];
    assert_eq!(entry.view.published_at, at(60));
    assert_eq!(entry.view.version, 2);
}

#[test]
fn an_amendment_moves_a_publication_between_boards() {
    let p = fold(&[
        publish(1, 0, &["35238", "35047"], Priority::Normal),
        amend(
            1,
            2,
            5,
            Amendment {
                communes: Some(CommuneSet::new(vec![code("35047"), code("35281")]).unwrap()),
                priority: Some(Priority::Urgent),
                ..Amendment::default()
            },
        ),
    ]);
    assert!(visible(&p, "35238", 6).is_empty());
    assert_eq!(visible(&p, "35047", 6), [pid(1)]);
    assert_eq!(visible(&p, "35281", 6), [pid(1)]);
    let entry = &p.feed(&code("35281")).unwrap().entries()[0];
    assert_eq!(entry.view.priority, Priority::Urgent);
    assert_eq!(entry.view.version, 2);
    assert_eq!(entry.view.updated_at, at(5));
}

#[test]
fn a_retracted_publication_leaves_every_board() {
    let p = fold(&[
        publish(1, 0, &["35238", "35047"], Priority::Normal),
        publish(2, 1, &["35238"], Priority::Normal),
        retract(1, 2, 5),
    ]);
    assert_eq!(visible(&p, "35238", 6), [pid(2)]);
    assert!(visible(&p, "35047", 6).is_empty());
}

#[test]
fn redelivered_events_change_nothing_and_gaps_are_refused() {
    let first = publish(1, 0, &["35238"], Priority::Normal);
    let second = amend(
        1,
        2,
        5,
        Amendment {
            title: Some(Title::parse("Marché annulé").unwrap()),
            ..Amendment::default()
        },
    );
    let third = retract(1, 3, 6);
    let mut p = FeedProjection::default();
    assert_eq!(p.apply(&second), Err(Gap { expected: 1 }));
    p.apply(&first).unwrap();
    assert_eq!(p.apply(&third), Err(Gap { expected: 2 }));
    p.apply(&second).unwrap();
    let snapshot = p.clone();
    p.apply(&first).unwrap();
    p.apply(&second).unwrap();
    assert_eq!(p, snapshot);
}

#[test]
fn closed_entries_are_pruned_by_event_time() {
    let mut c = content(&["35238"], Priority::Normal);
    c.window = VisibilityWindow::new(None, Some(at(50))).unwrap();
    let p = fold(&[
        publish_content(1, 0, c),
        publish(2, 100, &["35238"], Priority::Normal),
    ]);
    let ids: Vec<_> = p
        .feed(&code("35238"))
        .unwrap()
        .entries()
        .iter()
        .map(|e| e.view.id)
        .collect();
    assert_eq!(ids, [pid(2)]);
}

#[test]
fn a_fold_stream_after_stream_settles_to_the_boards_of_a_fold_in_time_order() {
    let mut short = content(&["35238", "35047"], Priority::Normal);
    short.window = VisibilityWindow::new(None, Some(at(50))).unwrap();
    let first = vec![
        publish_content(1, 0, short),
        amend(
            1,
            2,
            10,
            Amendment {
                priority: Some(Priority::Urgent),
                ..Amendment::default()
            },
        ),
    ];
    let later = vec![publish(2, 100, &["35238"], Priority::Normal)];
    let in_time_order: Vec<_> = first.iter().chain(&later).cloned().collect();
    let stream_after_stream: Vec<_> = later.iter().chain(&first).cloned().collect();

    let mut expected = fold(&in_time_order);
    let mut folded = fold(&stream_after_stream);
    // Unsettled, the later stream's time never reached the earlier one's
    // board entry, closed since.
    assert_ne!(folded, expected);
    folded.settle();
    expected.settle();
    assert_eq!(folded.feed(&code("35238")), expected.feed(&code("35238")));
    assert_eq!(
        folded.feed(&code("35238")).unwrap().entries().len(),
        1,
        "only the open publication is left"
    );
    // A board no later event touched keeps what was open at its own last event.
    assert_eq!(folded.feed(&code("35047")), expected.feed(&code("35047")));
    assert_eq!(folded.feed(&code("35047")).unwrap().entries().len(), 1);
    assert_eq!(folded.records().count(), 2);
}

#[test]
fn cursors_round_trip_and_page_in_feed_order() {
    let events: Vec<_> = (1..=5)
        .map(|n| publish(n, i64::from(n), &["35238"], Priority::Normal))
        .collect();
    let p = fold(&events);
    let doc = p.feed(&code("35238")).unwrap();
    let first: Vec<_> = doc.visible_after(at(10), None).take(2).collect();
    let cursor = first[1].sort_key().to_cursor();
    let key = SortKey::from_cursor(&cursor).unwrap();
    assert_eq!(key, first[1].sort_key());
    let rest: Vec<_> = doc
        .visible_after(at(10), Some(key))
        .map(|e| e.view.id)
        .collect();
    assert_eq!(rest, [pid(3), pid(2), pid(1)]);
    for bad in [
        "",
        "x",
        "n.1.2",
        "u.abc.01936f5e-0001-7c3b-9a6e-3f1d2c4b5a69",
        "n.-5.01936f5e-0001-7c3b-9a6e-3f1d2c4b5a69",
    ] {
        assert_eq!(SortKey::from_cursor(bad), None, "{bad}");
    }
}

// --- property: only the set of events matters -----------------------------------

const COMMUNES: [&str; 4] = ["35238", "35047", "35281", "29019"];

/// A random history of one publication stream: publish, then amendments, maybe a retraction.
fn stream(n: u16) -> impl Strategy<Value = Vec<Envelope<PublicationEvent>>> {
    (
        proptest::sample::subsequence(COMMUNES.to_vec(), 1..=4),
        any::<bool>(),
        proptest::collection::vec(
            (
                proptest::option::of(proptest::sample::subsequence(COMMUNES.to_vec(), 1..=4)),
                proptest::option::of(any::<bool>()),
                proptest::option::of(proptest::option::of(200i64..400)),
            ),
            0..4,
        ),
        any::<bool>(),
        0i64..100,
    )
        .prop_map(move |(communes, urgent, amendments, retracted, start)| {
            let priority = if urgent {
                Priority::Urgent
            } else {
                Priority::Normal
            };
            let mut events = vec![publish(n, start, &communes, priority)];
            for (i, (communes, urgent, until)) in amendments.into_iter().enumerate() {
                let version = i as u64 + 2;
                events.push(amend(
                    n,
                    version,
                    start + version as i64,
                    Amendment {
                        communes: communes
                            .map(|c| CommuneSet::new(c.iter().map(|c| code(c)).collect()).unwrap()),
                        priority: urgent.map(|u| {
                            if u {
                                Priority::Urgent
                            } else {
                                Priority::Normal
                            }
                        }),
                        visible_until: until.map(|u| u.map(at)),
                        ..Amendment::default()
                    },
                ));
            }
            if retracted {
                let version = events.len() as u64 + 1;
                events.push(retract(n, version, start + 10));
            }
            events
        })
}

/// Several streams, merged in a random interleaving (each stream's own order kept),
/// with random redeliveries of already-delivered events.
/// Streams, the order to pick from them, and redeliveries to add.
type History = (
    Vec<Vec<Envelope<PublicationEvent>>>,
    Vec<usize>,
    Vec<(usize, usize)>,
);

fn histories() -> impl Strategy<Value = History> {
    proptest::collection::vec(any::<u16>(), 1..5)
        .prop_flat_map(|ids| {
            let streams: Vec<_> = ids
                .iter()
                .enumerate()
                .map(|(i, _)| stream(i as u16 + 1))
                .collect();
            streams
        })
        .prop_flat_map(|streams| {
            let total: usize = streams.iter().map(Vec::len).sum();
            let n = streams.len();
            (
                Just(streams),
                proptest::collection::vec(0..n, total..=total),
                proptest::collection::vec((0..total.max(1), 0..total.max(1)), 0..6),
            )
        })
}

fn interleave(
    streams: &[Vec<Envelope<PublicationEvent>>],
    picks: &[usize],
    duplicates: &[(usize, usize)],
) -> Vec<Envelope<PublicationEvent>> {
    let mut cursors = vec![0; streams.len()];
    let mut out: Vec<Envelope<PublicationEvent>> = Vec::new();
    for &pick in picks {
        // Take from the picked stream, or the next one that still has events.
        let s = (0..streams.len())
            .map(|k| (pick + k) % streams.len())
            .find(|&s| cursors[s] < streams[s].len())
            .expect("picks match the number of events");
        out.push(streams[s][cursors[s]].clone());
        cursors[s] += 1;
    }
    // Redeliver some already-delivered event later on.
    for &(from, to) in duplicates {
        if from < out.len() && to < out.len() {
            let (src, dst) = (from.min(to), from.max(to));
            let copy = out[src].clone();
            out.insert(dst + 1, copy);
        }
    }
    out
}

/// The same streams merged twice, in two interleavings with their own
/// redeliveries (`picks2` is padded to the number of events).
fn two_interleavings(
    streams: &[Vec<Envelope<PublicationEvent>>],
    picks: &[usize],
    duplicates: &[(usize, usize)],
    mut picks2: Vec<usize>,
    duplicates2: &[(usize, usize)],
) -> (
    Vec<Envelope<PublicationEvent>>,
    Vec<Envelope<PublicationEvent>>,
) {
    let total: usize = streams.iter().map(Vec::len).sum();
    picks2.resize(total, 0);
    (
        interleave(streams, picks, duplicates),
        interleave(streams, &picks2, duplicates2),
    )
}

fn rendered(p: &FeedProjection, now: Timestamp) -> Vec<(String, Vec<PublicationView>)> {
    let mut feeds: Vec<_> = COMMUNES
        .iter()
        .map(|c| {
            let views = p
                .feed(&code(c))
                .map(|d| d.visible_after(now, None).map(|e| e.view.clone()).collect())
                .unwrap_or_default();
            (c.to_string(), views)
        })
        .collect();
    feeds.sort_by(|a, b| a.0.cmp(&b.0));
    feeds
}

proptest! {
    #[test]
    fn the_feed_depends_only_on_the_set_of_events(
        (streams, picks, duplicates) in histories(),
        (picks2, duplicates2) in (proptest::collection::vec(0usize..5, 0..40), proptest::collection::vec((0usize..40, 0usize..40), 0..6)),
    ) {
        let (one, other) = two_interleavings(&streams, &picks, &duplicates, picks2, &duplicates2);
        let a = fold(&one);
        let b = fold(&other);
        // Reading after every event happened: identical boards.
        let now = at(1_000);
        prop_assert_eq!(rendered(&a, now), rendered(&b, now));
        prop_assert_eq!(
            a.records().map(|r| (r.id, r.version)).collect::<std::collections::BTreeMap<_, _>>(),
            b.records().map(|r| (r.id, r.version)).collect::<std::collections::BTreeMap<_, _>>()
        );
    }

    #[test]
    fn a_board_never_shows_a_publication_twice_nor_a_retracted_one(
        (streams, picks, duplicates) in histories(),
    ) {
        let p = fold(&interleave(&streams, &picks, &duplicates));
        for (_, views) in rendered(&p, at(1_000)) {
            let mut ids: Vec<_> = views.iter().map(|v| v.id).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), views.len());
            for v in &views {
                let record = p.record(&v.id).unwrap();
                let live = !matches!(record.status, Status::Retracted { .. });
                prop_assert!(live);
            }
        }
    }
}

// The publisher statistics are folded from the same histories: they too depend
// only on the set of events, and agree with the full publication records.

fn fold_stats(events: &[Envelope<PublicationEvent>]) -> crate::stats::StatsProjection {
    let mut projection = crate::stats::StatsProjection::default();
    for e in events {
        projection.apply(e).unwrap();
    }
    projection
}

proptest! {
    #[test]
    fn the_statistics_depend_only_on_the_set_of_events_and_match_the_records(
        (streams, picks, duplicates) in histories(),
        (picks2, duplicates2) in (proptest::collection::vec(0usize..5, 0..40), proptest::collection::vec((0usize..40, 0usize..40), 0..6)),
    ) {
        let (one, other) = two_interleavings(&streams, &picks, &duplicates, picks2, &duplicates2);
        let (a, b) = (fold_stats(&one), fold_stats(&other));
        prop_assert_eq!(&a, &b);

        // The oracle: the same figures computed from the full records.
        let records = fold(&one);
        let publisher = PublisherId::new(Uuid::from_u128(1));
        let summary = a.summary(&publisher).unwrap();
        let all: Vec<_> = records.records().collect();
        prop_assert_eq!(summary.publications, all.len() as u64);
        prop_assert_eq!(
            summary.retracted,
            all.iter().filter(|r| matches!(r.status, Status::Retracted { .. })).count() as u64
        );
        prop_assert_eq!(
            summary.urgent,
            all.iter().filter(|r| r.content.priority == Priority::Urgent).count() as u64
        );
        prop_assert_eq!(
            summary.commune_notices,
            all.iter().map(|r| r.content.communes.len() as u64).sum::<u64>()
        );
        let events_per_stream: u64 = all.iter().map(|r| r.version).sum();
        let retractions = summary.retracted;
        // Every event after the creation is an amendment or the retraction.
        prop_assert_eq!(summary.amendments, events_per_stream - summary.publications - retractions);
    }
}

#[test]
fn statistics_wait_for_the_creation_that_names_the_publisher() {
    let mut stats = crate::stats::StatsProjection::default();
    let retraction = retract(7, 2, 20);
    assert_eq!(stats.apply(&retraction), Err(Gap { expected: 1 }));
    stats
        .apply(&publish(7, 10, &["35238", "35047"], Priority::Urgent))
        .unwrap();
    stats.apply(&retraction).unwrap();
    stats.apply(&retraction).unwrap();
    let summary = stats
        .summary(&PublisherId::new(Uuid::from_u128(1)))
        .unwrap();
    assert_eq!(
        (
            summary.publications,
            summary.retracted,
            summary.live,
            summary.urgent,
            summary.commune_notices
        ),
        (1, 1, 0, 1, 2)
    );
    assert_eq!(summary.by_category.get(&Category::Event), Some(&1));
}

// Boards that have not caught up with the log (the broker away), with the
// publications still pending laid over them.

/// The visible entries of a board at `now`.
fn visible_views(doc: &FeedDocument, now: Timestamp) -> Vec<PublicationView> {
    doc.visible_after(now, None)
        .map(|e| e.view.clone())
        .collect()
}

/// Streams cut in two: the events a projector has applied (a prefix of each
/// stream), and the whole streams the log holds.
fn cut_histories() -> impl Strategy<Value = (Vec<Vec<Envelope<PublicationEvent>>>, Vec<usize>)> {
    histories().prop_flat_map(|(streams, _, _)| {
        let n = streams.len();
        (Just(streams), proptest::collection::vec(0usize..6, n..=n))
    })
}

fn projected_part(streams: &[Vec<Envelope<PublicationEvent>>], cuts: &[usize]) -> FeedProjection {
    let applied: Vec<_> = streams
        .iter()
        .zip(cuts)
        .flat_map(|(s, &cut)| s[..cut.min(s.len())].iter().cloned())
        .collect();
    fold(&applied)
}

fn render_commune() -> crate::CommuneView {
    crate::CommuneView {
        code: code(COMMUNES[0]),
        name: "Rennes".to_owned(),
        department: "35".to_owned(),
        postcodes: vec!["35000".to_owned()],
        population: 220_488,
    }
}

proptest! {
    #[test]
    fn a_board_behind_the_log_with_its_pending_publications_laid_over_shows_what_the_log_says(
        (streams, cuts) in cut_histories(),
        now in prop_oneof![Just(50i64), Just(300), Just(1_000)],
    ) {
        let behind = projected_part(&streams, &cuts);
        let full = fold(&streams.concat());
        let pending: Vec<_> = streams
            .iter()
            .map(|s| PendingPublication::fold(s).expect("whole streams fold"))
            .collect();
        for c in COMMUNES {
            let mut board = behind.feed(&code(c)).cloned().unwrap_or_default();
            // Laid over twice: the second time changes nothing.
            for _ in 0..2 {
                for p in &pending {
                    board.overlay(p, &code(c), at(now));
                }
            }
            let expected = full.feed(&code(c)).map(|d| visible_views(d, at(now))).unwrap_or_default();
            prop_assert_eq!(visible_views(&board, at(now)), expected, "commune {}", c);
        }
    }

    #[test]
    fn a_rendered_first_page_read_back_serves_every_page_up_to_its_horizon(
        (streams, cuts) in cut_histories(),
        page_size in 1usize..4,
    ) {
        let now = at(300);
        let view = render_commune();
        let commune = code(COMMUNES[0]);
        let behind = projected_part(&streams, &cuts);
        let full = fold(&streams.concat());
        let board = behind.feed(&commune).cloned().unwrap_or_default();
        let first = crate::render_page(&view, &board, now, None, page_size);
        let (mut known, horizon) = crate::page_board(&first.json).expect("a rendered page reads back");
        for s in &streams {
            known.overlay(&PendingPublication::fold(s).unwrap(), &commune, now);
        }
        let mut served = Vec::new();
        let mut after = None;
        while let Some(page) = crate::render_known_page(&view, &known, now, after, page_size, horizon) {
            let page: serde_json::Value = serde_json::from_slice(&page.json).unwrap();
            let ids: Vec<String> = page["publications"].as_array().unwrap().iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()).collect();
            served.extend(ids);
            match page["next"].as_str() {
                Some(cursor) => after = Some(SortKey::from_cursor(cursor).unwrap()),
                None => break,
            }
            prop_assert!(served.len() <= 100, "paging ends");
        }
        let truth: Vec<String> = full
            .feed(&commune)
            .map(|d| d.visible_after(now, None)
                .filter(|e| horizon.is_none_or(|h| e.sort_key() <= h))
                .map(|e| e.view.id.to_string())
                .collect())
            .unwrap_or_default();
        prop_assert_eq!(served, truth);
    }
}
