//! Benchmark tool: fills a MariaDB event log with a realistic history of N
//! events, decided by the real domain (`decide`) and encoded by the real codec,
//! inserted in bulk. Used by `bench/run replay`.
//!
//! Usage: `seed_log MYSQL_URL EVENTS` or `seed_log MYSQL_URL --per-commune N`
//!
//! The history spans a year: most publications go to one to three communes and
//! stay visible one to four weeks; one in a thousand is a department-wide alert;
//! half are amended once, a fifth twice, a tenth are retracted.
//!
//! With `--per-commune N` (`bench/run scale`), every one of the 34,969 communes
//! gets N live publications of its own instead, each a few sentences of French
//! text (a busy town hall's feed: about 15 KB for 20), published over the last
//! twenty days and visible for two more months.

use std::collections::BTreeMap;

use panneau::codec::encode_event;
use panneau_domain::{
    Actor, Amendment, Attachments, Body, Category, Command, CommuneSet, Content, DepartmentCode,
    Envelope, EventId, InseeCode, Issuer, Priority, Publication, PublicationEvent, PublicationId,
    PublisherId, Role, Scope, StreamId, Timestamp, Title, TokenId, VisibilityWindow, decide,
    evolve,
};
use sqlx::Connection;
use uuid::Uuid;

const BATCH: usize = 1_000;
const DAY: i64 = 86_400_000_000;

struct Row {
    envelope: Envelope<PublicationEvent>,
    owner: Option<[u8; 16]>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    panneau::install_crypto();
    let mut args = std::env::args().skip(1);
    const USAGE: &str = "usage: seed_log MYSQL_URL EVENTS | seed_log MYSQL_URL --per-commune N";
    let url = args.next().expect(USAGE);
    let first = args.next().expect(USAGE);
    let per_commune: Option<usize> = if first == "--per-commune" {
        Some(args.next().expect(USAGE).parse()?)
    } else {
        None
    };
    let target: usize = match per_commune {
        Some(_) => 0,
        None => first.parse()?,
    };

    let communes = panneau::app::COMMUNES.clone();
    let all: Vec<InseeCode> = communes.iter().map(|c| c.code).collect();
    let mut by_department: BTreeMap<DepartmentCode, Vec<InseeCode>> = BTreeMap::new();
    for code in &all {
        by_department
            .entry(code.department())
            .or_default()
            .push(*code);
    }
    let departments: Vec<DepartmentCode> = by_department.keys().copied().collect();
    let publisher = PublisherId::new(Uuid::now_v7());
    let token = TokenId::new(Uuid::now_v7());
    let issuer = Issuer {
        publisher,
        token,
        role: Role::Admin,
        scope: Scope::Departments(departments.iter().copied().collect()),
    };
    let actor = Actor::Publisher { publisher, token };

    let mut conn = sqlx::MySqlConnection::connect(&url).await?;
    if let Some(n) = per_commune {
        let written = seed_per_commune(&mut conn, &all, n, &issuer, &actor).await?;
        sqlx::query("DELETE FROM outbox").execute(&mut conn).await?;
        println!("{written} events in {written} publications");
        return Ok(());
    }
    let start = Timestamp::from_unix_micros(1_735_689_600_000_000); // 2025-01-01
    let mut rng = fastrand::Rng::with_seed(42);
    let (mut written, mut batch) = (0usize, Vec::with_capacity(BATCH));
    let mut publication = 0u64;
    while written + batch.len() < target {
        publication += 1;
        // Publications spread evenly over the year.
        let now = Timestamp::from_unix_micros(
            start.as_unix_micros() + (publication as i64) * (365 * DAY / (target as i64 / 2)),
        );
        let list: Vec<InseeCode> = if rng.u32(0..1000) == 0 {
            let department = departments[rng.usize(0..departments.len())];
            by_department[&department].clone()
        } else {
            let mut picked: Vec<InseeCode> = (0..rng.usize(1..=3))
                .map(|_| all[rng.usize(0..all.len())])
                .collect();
            picked.sort();
            picked.dedup();
            picked
        };
        let until = Timestamp::from_unix_micros(now.as_unix_micros() + rng.i64(7..=28) * DAY);
        let content = Content {
            communes: CommuneSet::new(list)?,
            title: Title::parse(format!("Avis n° {publication}"))?,
            body: Body::parse(
                "Travaux sur le réseau d'eau potable mardi de 8 h à 12 h. Merci de votre compréhension.",
            )?,
            category: [
                Category::Info,
                Category::Roadworks,
                Category::Event,
                Category::Alert,
            ][rng.usize(0..4)],
            priority: if rng.u32(0..20) == 0 {
                Priority::Urgent
            } else {
                Priority::Normal
            },
            window: VisibilityWindow::new(None, Some(until))?,
            attachments: Attachments::default(),
        };
        let id = PublicationId::new(Uuid::now_v7())?;
        let mut commands = vec![Command::Publish {
            id,
            issuer: issuer.clone(),
            content,
            notify: false,
        }];
        if rng.u32(0..2) == 0 {
            commands.push(amend(&issuer, "Avis modifié"));
            if rng.u32(0..5) < 2 {
                commands.push(amend(&issuer, "Avis modifié deux fois"));
            }
        }
        if rng.u32(0..10) == 0 {
            commands.push(Command::Retract {
                issuer: issuer.clone(),
            });
        }
        let mut state = Publication::Absent;
        let mut version = 0;
        for (step, command) in commands.into_iter().enumerate() {
            let at =
                Timestamp::from_unix_micros(now.as_unix_micros() + step as i64 * 3_600_000_000);
            for payload in decide(&state, command, at)? {
                version += 1;
                state = evolve(state, &payload);
                let owner = (version == 1).then_some(publisher);
                batch.push(row(id, version, at, &actor, payload, owner));
            }
        }
        if batch.len() >= BATCH {
            written += insert(&mut conn, &mut batch).await?;
            if written % 100_000 < BATCH {
                eprintln!("{written} events");
            }
        }
    }
    written += insert(&mut conn, &mut batch).await?;
    // The relay of a live instance would publish these; the benchmark has none.
    sqlx::query("DELETE FROM outbox").execute(&mut conn).await?;
    println!("{written} events in {publication} publications");
    Ok(())
}

const TITLES: [&str; 12] = [
    "Coupure d'eau rue des Lilas",
    "Travaux de voirie avenue de la Gare",
    "Marché de Noël sur la place",
    "Fermeture exceptionnelle de la mairie",
    "Collecte des encombrants",
    "Alerte canicule : restez au frais",
    "Inscriptions à la cantine scolaire",
    "Conseil municipal du mois",
    "Vigilance orange orages",
    "Campagne de vaccination antigrippale",
    "Nouveaux horaires de la médiathèque",
    "Fête de la musique",
];
const SENTENCES: [&str; 10] = [
    "Les services techniques interviendront de 8 h à 12 h ; la circulation sera alternée.",
    "Merci de ne pas stationner le long de la chaussée pendant toute la durée des travaux.",
    "Pour tout renseignement, l'accueil de la mairie est ouvert du lundi au vendredi.",
    "Les riverains seront informés individuellement par courrier dans les prochains jours.",
    "En cas d'urgence, composez le 18 ou le 112 depuis un téléphone portable.",
    "La municipalité vous remercie de votre compréhension et de votre patience.",
    "Un arrêté municipal précise les conditions d'accès au site et les horaires d'ouverture.",
    "Les enfants doivent être accompagnés d'un adulte ; l'entrée est libre et gratuite.",
    "Pensez à vérifier l'état de vos gouttières et à rentrer le mobilier de jardin.",
    "Les personnes âgées ou isolées peuvent se faire connaître auprès du CCAS.",
];

/// `n` live single-commune publications for every commune.
async fn seed_per_commune(
    conn: &mut sqlx::MySqlConnection,
    all: &[InseeCode],
    n: usize,
    issuer: &Issuer,
    actor: &Actor,
) -> anyhow::Result<usize> {
    let mut rng = fastrand::Rng::with_seed(7);
    let now = panneau::now();
    let (mut written, mut batch) = (0usize, Vec::with_capacity(BATCH));
    for code in all {
        for i in 0..n {
            let at = Timestamp::from_unix_micros(now.as_unix_micros() - rng.i64(1..20 * DAY));
            let body: Vec<&str> = (0..rng.usize(4..=8))
                .map(|_| SENTENCES[rng.usize(0..SENTENCES.len())])
                .collect();
            let content = Content {
                communes: CommuneSet::new(vec![*code])?,
                title: Title::parse(format!(
                    "{} ({})",
                    TITLES[rng.usize(0..TITLES.len())],
                    i + 1
                ))?,
                body: Body::parse(body.join(" "))?,
                category: [Category::Info, Category::Roadworks, Category::Event][rng.usize(0..3)],
                priority: if i == 0 {
                    Priority::Urgent
                } else {
                    Priority::Normal
                },
                window: VisibilityWindow::new(
                    None,
                    Some(Timestamp::from_unix_micros(now.as_unix_micros() + 60 * DAY)),
                )?,
                attachments: Attachments::default(),
            };
            let id = PublicationId::new(Uuid::now_v7())?;
            let command = Command::Publish {
                id,
                issuer: issuer.clone(),
                content,
                notify: false,
            };
            for payload in decide(&Publication::Absent, command, at)? {
                batch.push(row(id, 1, at, actor, payload, Some(issuer.publisher)));
            }
            if batch.len() >= BATCH {
                written += insert(conn, &mut batch).await?;
            }
        }
    }
    written += insert(conn, &mut batch).await?;
    Ok(written)
}

/// One event of a publication stream, as the log stores it; `owner` on the
/// creation only.
fn row(
    id: PublicationId,
    version: u64,
    at: Timestamp,
    actor: &Actor,
    payload: PublicationEvent,
    owner: Option<PublisherId>,
) -> Row {
    Row {
        envelope: Envelope {
            event_id: EventId::new(Uuid::now_v7()),
            stream_id: StreamId::publication(id),
            stream_version: version,
            event_type: payload.event_type(),
            schema_version: payload.schema_version(),
            occurred_at: at,
            recorded_at: at,
            actor: actor.clone(),
            request_id: None,
            payload,
        },
        owner: owner.map(|p| *p.as_uuid().as_bytes()),
    }
}

fn amend(issuer: &Issuer, title: &str) -> Command {
    Command::Amend {
        issuer: issuer.clone(),
        amendment: Amendment {
            title: Some(Title::parse(title).expect("a valid title")),
            ..Amendment::default()
        },
    }
}

async fn insert(conn: &mut sqlx::MySqlConnection, batch: &mut Vec<Row>) -> anyhow::Result<usize> {
    if batch.is_empty() {
        return Ok(0);
    }
    let mut sql = String::from(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, \
         publisher_id, occurred_at, recorded_at, envelope) VALUES ",
    );
    for i in 0..batch.len() {
        sql.push_str(if i == 0 {
            "(?,?,?,?,?,?,?,?,?)"
        } else {
            ",(?,?,?,?,?,?,?,?,?)"
        });
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for row in batch.iter() {
        let e = &row.envelope;
        query = query
            .bind(e.event_id.as_uuid().as_bytes().to_vec())
            .bind(e.stream_id.as_str().to_owned())
            .bind(i64::try_from(e.stream_version)?)
            .bind(e.event_type)
            .bind(i64::from(e.schema_version))
            .bind(row.owner.map(|o| o.to_vec()))
            .bind(e.occurred_at.as_unix_micros())
            .bind(e.recorded_at.as_unix_micros())
            .bind(encode_event(e));
    }
    query.execute(&mut *conn).await?;
    let n = batch.len();
    batch.clear();
    Ok(n)
}
