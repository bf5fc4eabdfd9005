//! Golden fixtures: the stored form of every event version, decoded by every
//! later release. A fixture is written once (`PANNEAU_BLESS_FIXTURES=1 cargo test
//! codec`) when a new event version is introduced, and never rewritten after it
//! is committed: if this test fails, stored events would no longer decode.

use std::path::PathBuf;

use panneau_domain::{
    Amendment, Attachment, AttachmentName, Attachments, Body, Category, CommuneSet, Content,
    ContentType, HttpsUrl, InseeCode, Priority, PublicationId, PublisherId, Title, TokenId,
    VisibilityWindow,
};

use super::*;

fn t(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(micros)
}

fn id() -> PublicationId {
    PublicationId::parse("01936f5e-8f3a-7c3b-9a6e-3f1d2c4b5a69").unwrap()
}

fn content() -> Content {
    Content {
        communes: CommuneSet::new(vec![
            InseeCode::parse("35238").unwrap(),
            InseeCode::parse("2A004").unwrap(),
        ])
        .unwrap(),
        title: Title::parse("Alerte orages : vigilance orange").unwrap(),
        body: Body::parse("Évitez les déplacements.\nRestez à l'abri des arbres.").unwrap(),
        category: Category::Weather,
        priority: Priority::Urgent,
        window: VisibilityWindow::new(
            Some(t(1_790_000_000_000_000)),
            Some(t(1_790_086_400_000_000)),
        )
        .unwrap(),
        attachments: Attachments::new(vec![Attachment {
            url: HttpsUrl::parse("https://www.ille-et-vilaine.gouv.fr/alerte.pdf").unwrap(),
            name: AttachmentName::parse("Communiqué de la préfecture").unwrap(),
            content_type: ContentType::parse("application/pdf").unwrap(),
        }])
        .unwrap(),
    }
}

fn publisher_actor() -> Actor {
    Actor::Publisher {
        publisher: PublisherId::new(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001)),
        token: TokenId::new(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0002)),
    }
}

fn envelope(version: u64, actor: Actor, payload: PublicationEvent) -> Envelope<PublicationEvent> {
    Envelope {
        event_id: EventId::new(Uuid::from_u128(
            0x0193_6f5e_9000_7000_8000_0000_0000_0000 + u128::from(version),
        )),
        stream_id: StreamId::publication(id()),
        stream_version: version,
        event_type: payload.event_type(),
        schema_version: payload.schema_version(),
        occurred_at: t(1_790_000_000_000_000 + version as i64),
        recorded_at: t(1_790_000_000_000_100 + version as i64),
        actor,
        request_id: Some(RequestId::parse("req-01936f5e").unwrap()),
        payload,
    }
}

/// One sample of every event type and version, by fixture name.
fn samples() -> Vec<(&'static str, Envelope<PublicationEvent>)> {
    let publisher = PublisherId::new(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001));
    let author = TokenId::new(Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0002));
    vec![
        (
            "PublicationPublished.v1",
            envelope(
                1,
                publisher_actor(),
                PublicationEvent::Published(PublicationPublished {
                    id: id(),
                    publisher,
                    author,
                    content: content(),
                    notify: true,
                    published_at: t(1_790_000_000_000_001),
                }),
            ),
        ),
        (
            "PublicationScheduled.v1",
            envelope(
                1,
                publisher_actor(),
                PublicationEvent::Scheduled(PublicationScheduled {
                    id: id(),
                    publisher,
                    author,
                    content: content(),
                    notify: false,
                    publish_at: t(1_790_003_600_000_000),
                    scheduled_at: t(1_790_000_000_000_001),
                }),
            ),
        ),
        (
            "PublicationWentLive.v1",
            envelope(
                2,
                Actor::System {
                    component: "scheduler".into(),
                },
                PublicationEvent::WentLive(PublicationWentLive {
                    id: id(),
                    at: t(1_790_003_600_500_000),
                }),
            ),
        ),
        (
            "PublicationAmended.v1",
            envelope(
                3,
                publisher_actor(),
                PublicationEvent::Amended(PublicationAmended {
                    id: id(),
                    changes: Amendment {
                        communes: Some(
                            CommuneSet::new(vec![InseeCode::parse("35047").unwrap()]).unwrap(),
                        ),
                        title: Some(Title::parse("Alerte levée").unwrap()),
                        body: None,
                        category: Some(Category::Info),
                        priority: Some(Priority::Normal),
                        visible_from: Some(None),
                        visible_until: Some(Some(t(1_790_172_800_000_000))),
                        attachments: Some(Attachments::default()),
                        publish_at: None,
                    },
                    at: t(1_790_007_200_000_000),
                }),
            ),
        ),
        (
            "PublicationRetracted.v1",
            envelope(
                4,
                publisher_actor(),
                PublicationEvent::Retracted(PublicationRetracted {
                    id: id(),
                    at: t(1_790_010_800_000_000),
                }),
            ),
        ),
    ]
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/events")
        .join(format!("{name}.bin"))
}

#[test]
fn every_golden_fixture_decodes_to_its_event() {
    let bless = std::env::var_os("PANNEAU_BLESS_FIXTURES").is_some();
    for (name, expected) in samples() {
        let path = fixture_path(name);
        if bless && !path.exists() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, encode_event(&expected)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "fixture {} is missing ({e}); see this module's comment",
                path.display()
            )
        });
        let decoded =
            decode_event(&bytes).unwrap_or_else(|e| panic!("{name} no longer decodes: {e}"));
        assert_eq!(decoded, expected, "{name} decodes to something else");
    }
}

#[test]
fn current_versions_still_encode_to_their_fixture() {
    // Today's encoder must write exactly what the fixtures hold, or events written
    // from now on would differ from what older releases can read.
    for (name, event) in samples() {
        let bytes = std::fs::read(fixture_path(name)).expect("fixture present");
        assert_eq!(encode_event(&event), bytes, "{name} encodes differently");
    }
}

#[test]
fn envelopes_round_trip() {
    for (_, event) in samples() {
        assert_eq!(decode_event(&encode_event(&event)).unwrap(), event);
    }
}

#[test]
fn unknown_formats_and_events_are_refused() {
    assert!(matches!(decode_event(&[]), Err(CodecError::Empty)));
    assert!(matches!(
        decode_event(&[9, 1, 2]),
        Err(CodecError::UnknownFormat(9))
    ));
    let mut stored: StoredEnvelope = decode(&encode_event(&samples()[0].1)[1..]).unwrap();
    stored.schema_version = 99;
    let mut bytes = vec![ENVELOPE_V1];
    bytes.extend(encode(&stored));
    assert!(matches!(
        decode_event(&bytes),
        Err(CodecError::UnknownEvent {
            schema_version: 99,
            ..
        })
    ));
    let mut trailing = encode_event(&samples()[0].1);
    trailing.push(0);
    assert!(matches!(decode_event(&trailing), Err(CodecError::Trailing)));
}

#[test]
fn invalid_values_in_stored_bytes_are_refused_not_smuggled_in() {
    // A title of 141 characters cannot come out of the decoder.
    let mut stored: StoredEnvelope = decode(&encode_event(&samples()[0].1)[1..]).unwrap();
    let mut published: PublicationPublished = decode(&stored.payload).unwrap();
    let long = "x".repeat(141);
    // Re-encode with the raw string in place of the title.
    #[derive(Serialize)]
    struct Raw<'a> {
        id: PublicationId,
        publisher: PublisherId,
        author: TokenId,
        communes: &'a CommuneSet,
        title: &'a str,
    }
    published.notify = true;
    stored.payload = encode(&Raw {
        id: published.id,
        publisher: published.publisher,
        author: published.author,
        communes: &published.content.communes,
        title: &long,
    });
    let mut bytes = vec![ENVELOPE_V1];
    bytes.extend(encode(&stored));
    assert!(decode_event(&bytes).is_err());
}
