//! The command line, run as the operator runs it.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{database_url, notice, panneau_cli, spawn_app, succeeded};

fn panneau(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_panneau"))
        .args(args)
        .env("PANNEAU_DATABASE_URL", database_url(dir))
        .env_remove("PANNEAU_CONFIG")
        .output()
        .expect("the panneau binary runs")
}

#[tokio::test]
async fn publisher_create_prints_a_token_once_that_publishes() {
    let app = spawn_app().await;
    let out = panneau(
        app.dir.path(),
        &[
            "publisher",
            "create",
            "--name",
            "Mairie de Rennes",
            "--commune",
            "35238",
            "--commune",
            "35051",
            "--role",
            "editor",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        token.starts_with("pnn_") && !token.contains(char::is_whitespace),
        "stdout is the token alone"
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(&token),
        "the token is printed once"
    );
    let id = app.publish_ok(&token, &notice(&["35238", "35051"])).await;
    assert!(!id.is_empty());

    // The database holds only a hash of it.
    let raw = std::fs::read(app.db_path()).unwrap();
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));

    let list = panneau(app.dir.path(), &["publisher", "list"]);
    let listing = String::from_utf8(list.stdout).unwrap();
    assert!(listing.contains("Mairie de Rennes") && listing.contains("communes 35051,35238"));
    assert!(!listing.contains(&token));
    let publisher_id = listing.split('\t').next().unwrap().to_owned();

    let revoke = panneau(app.dir.path(), &["publisher", "revoke", &publisher_id]);
    assert!(revoke.status.success());
    // Instances trust a validated token for a few seconds (TOKEN_CACHE_TTL).
    let refused = app
        .eventually(
            panneau::api::TOKEN_CACHE_TTL + Duration::from_secs(2),
            || async { app.publish(&token, &notice(&["35238"])).await.status() == 401 },
        )
        .await;
    assert!(refused, "a revoked token is refused");
}

#[tokio::test]
async fn publisher_create_refuses_an_unknown_commune_or_no_scope() {
    let app = spawn_app().await;
    let unknown = panneau(
        app.dir.path(),
        &["publisher", "create", "--name", "X", "--commune", "35999"],
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("35999"));
    let none = panneau(app.dir.path(), &["publisher", "create", "--name", "X"]);
    assert!(!none.status.success());
    let prefecture = panneau(
        app.dir.path(),
        &[
            "publisher",
            "create",
            "--name",
            "Préfecture",
            "--department",
            "35",
            "--role",
            "admin",
        ],
    );
    assert!(prefecture.status.success());
}

#[test]
fn check_config_names_the_setting_at_fault() {
    let ok = Command::new(env!("CARGO_BIN_EXE_panneau"))
        .arg("check-config")
        .env_remove("PANNEAU_DATABASE_URL")
        .output()
        .unwrap();
    assert!(ok.status.success());
    let bad = Command::new(env!("CARGO_BIN_EXE_panneau"))
        .arg("check-config")
        .env("PANNEAU_HTTP_ADDR", "not-an-address")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .to_lowercase()
            .contains("http_addr")
    );
}

#[test]
fn check_config_refuses_user_data_outside_the_eu() {
    let run = |env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_panneau"));
        command.arg("check-config").env_remove("PANNEAU_CONFIG");
        for key in ["PANNEAU_DATABASE_REGION", "PANNEAU_NATS_REGION"] {
            command.env_remove(key);
        }
        command
            .env(
                "PANNEAU_DATABASE_URL",
                "mysql://panneau@db.internal:3306/panneau",
            )
            .env("PANNEAU_NATS_URL", "nats://nats.internal:4222");
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    };
    let undeclared = run(&[]);
    assert!(!undeclared.status.success());
    let stderr = String::from_utf8_lossy(&undeclared.stderr);
    assert!(
        stderr.contains("PANNEAU_DATABASE_REGION") && stderr.contains("PANNEAU_NATS_REGION"),
        "{stderr}"
    );

    let outside = run(&[
        ("PANNEAU_DATABASE_REGION", "us-east-1"),
        ("PANNEAU_NATS_REGION", "fr-par"),
    ]);
    assert!(!outside.status.success());
    assert!(String::from_utf8_lossy(&outside.stderr).contains("us-east-1"));
    let london = run(&[
        ("PANNEAU_DATABASE_REGION", "eu-west-2"),
        ("PANNEAU_NATS_REGION", "fr-par"),
    ]);
    assert!(!london.status.success(), "London is not in the EU");

    let inside = run(&[
        ("PANNEAU_DATABASE_REGION", "gra"),
        ("PANNEAU_NATS_REGION", "fr-par"),
    ]);
    assert!(
        inside.status.success(),
        "{}",
        String::from_utf8_lossy(&inside.stderr)
    );
    let stdout = String::from_utf8_lossy(&inside.stdout);
    assert!(stdout.contains("data residency: ok"));
    assert!(
        !stdout.contains("panneau@db"),
        "credentials and hosts of URLs are not echoed carelessly"
    );
}

#[test]
fn check_config_reads_backup_targets_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("panneau.toml");
    std::fs::write(
        &file,
        "database_region = \"fr-par\"\nnats_region = \"fr-par\"\n\n\
         [[backup_targets]]\nname = \"ovh\"\nendpoint = \"https://s3.gra.io.cloud.ovh.net\"\nregion = \"gra\"\n\n\
         [[backup_targets]]\nname = \"elsewhere\"\nendpoint = \"https://s3.us-east-1.amazonaws.com\"\nregion = \"us-east-1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_panneau"))
        .arg("check-config")
        .env("PANNEAU_CONFIG", &file)
        .env(
            "PANNEAU_DATABASE_URL",
            "mysql://panneau@db.internal:3306/panneau",
        )
        .env("PANNEAU_NATS_URL", "nats://nats.internal:4222")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("backup_targets.elsewhere.region"),
        "{stderr}"
    );
    assert!(!stderr.contains("backup_targets.ovh"), "{stderr}");
}

/// A cut-short, foreign or corrupt file is refused whole, naming the line.
#[tokio::test]
async fn an_incomplete_or_foreign_export_is_refused_and_writes_nothing() {
    let source = spawn_app().await;
    let token = source.town_hall().await;
    source.publish_ok(&token, &notice(&["35238"])).await;
    let dir = source.dir.path();
    let file = dir.join("export.jsonl");
    succeeded(&panneau_cli(
        &source.database_url,
        &["export", file.to_str().unwrap()],
    ));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("\"kind\":\"header\"")
            && lines.last().unwrap().contains("\"kind\":\"end\"")
    );

    let target_dir = tempfile::tempdir().unwrap();
    let target_url = crate::helpers::database_url(target_dir.path());
    let corrupt_envelope = {
        let mut event: Value = serde_json::from_str(
            lines
                .iter()
                .find(|l| l.contains("\"kind\":\"event\""))
                .unwrap(),
        )
        .unwrap();
        event["envelope"] = json!("AAAA");
        let mut all: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        let at = all
            .iter()
            .position(|l| l.contains("\"kind\":\"event\""))
            .unwrap();
        all[at] = event.to_string();
        (all.join("\n"), format!("line {}", at + 1))
    };
    for (name, content, expected) in [
        ("truncated", lines[..lines.len() - 1].join("\n"), "incomplete".to_owned()),
        ("no header", lines[1..].join("\n"), "line 1".to_owned()),
        ("foreign", "{\"kind\":\"header\",\"format\":\"other\",\"version\":1,\"exported_at_us\":0,\"panneau_version\":\"x\"}".to_owned(), "not a Panneau export".to_owned()),
        ("corrupt", corrupt_envelope.0, corrupt_envelope.1),
    ] {
        let bad = dir.join(format!("{name}.jsonl"));
        std::fs::write(&bad, content).unwrap();
        let output = panneau_cli(&target_url, &["import", bad.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name} is refused");
        assert!(stderr.contains(&expected), "{name}: {stderr}");
    }
    let listed = panneau_cli(&target_url, &["publisher", "list"]);
    assert!(
        listed.stdout.is_empty(),
        "nothing was written: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
}
