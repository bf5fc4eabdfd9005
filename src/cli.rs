//! The command line: `panneau serve` (the default), `panneau migrate`,
//! `panneau publisher create|token|list|revoke`, `panneau replay`,
//! `panneau export`, `panneau import`, `panneau check-config`.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use panneau_domain::{DepartmentCode, InseeCode, PublisherId, Role, Scope};
use secrecy::ExposeSecret;

use crate::app::COMMUNES;
use crate::config::{Config, Mode, SecretsSource};
use crate::readmodel::Model;
use crate::secrets::Secrets;
use crate::store::sql::{PoolSettings, SqlStore};
use crate::store::{NewToken, StateStore};
use crate::tokens::TokenHasher;

#[derive(Debug, Parser)]
#[command(
    name = "panneau",
    version,
    about = "Notices and alerts for communes: API, projections, push"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Commands>,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Serve the API (the default).
    Serve,
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Manage publishers and their tokens.
    #[command(subcommand)]
    Publisher(PublisherCommand),
    /// Check the configuration without starting anything.
    CheckConfig,
    /// Rebuild a read model from the event log into a new generation, then
    /// switch every instance to it (cluster mode). Never sends a notification.
    Replay(ReplayArgs),
    /// Write publishers, token hashes, the event log, refusals and view counts
    /// to a portable file (JSON Lines), from one consistent snapshot. Devices
    /// are not exported.
    Export {
        /// Where to write it (`-` or nothing: standard output).
        output: Option<PathBuf>,
    },
    /// Bring an export into this deployment's database. The whole file is
    /// checked before anything is written; what the database already holds is
    /// skipped; imported publications are never notified again.
    Import {
        /// The file written by `panneau export` (`-`: standard input).
        input: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The read model to rebuild (or, with --verify, to check).
    #[arg(value_enum)]
    pub projection: Option<Projection>,
    /// Rebuild in memory and compare with the live read model instead; exits
    /// with status 1 when they differ.
    #[arg(long)]
    pub verify: bool,
}

/// The read models `panneau replay` rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Projection {
    /// The feeds of every commune and the publications they show.
    Feeds,
    /// The statistics of every publisher.
    Stats,
}

impl Projection {
    fn model(self) -> Model {
        match self {
            Projection::Feeds => Model::Feeds,
            Projection::Stats => Model::Stats,
        }
    }

    /// How the output names a generation of it.
    fn label(self) -> &'static str {
        match self {
            Projection::Feeds => "feed",
            Projection::Stats => "stats",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PublisherCommand {
    /// Create a publisher and its first token. The token is printed once, alone on
    /// stdout; only its hash is stored.
    Create {
        /// Shown in the audit trail, e.g. "Mairie de Rennes".
        #[arg(long)]
        name: String,
        #[command(flatten)]
        grant: Grant,
    },
    /// Give an existing publisher another token (printed once on stdout).
    Token {
        /// The publisher's id (see `panneau publisher list`).
        publisher: String,
        #[command(flatten)]
        grant: Grant,
    },
    /// List publishers and their tokens (never the tokens themselves).
    List,
    /// Revoke one token, or every token of a publisher, by id.
    Revoke { id: String },
}

/// Role and scope of a token.
#[derive(Debug, Args)]
pub struct Grant {
    /// A commune it may publish to (INSEE code); repeat or separate with commas.
    #[arg(
        long = "commune",
        value_delimiter = ',',
        conflicts_with = "departments"
    )]
    communes: Vec<String>,
    /// A whole department it may publish to (a prefecture); repeat or separate with commas.
    #[arg(long = "department", value_delimiter = ',')]
    departments: Vec<String>,
    #[arg(long, value_enum, default_value_t = RoleArg::Editor)]
    role: RoleArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Editor,
    Admin,
}

impl Grant {
    fn scope(&self) -> anyhow::Result<Scope> {
        if !self.communes.is_empty() {
            let mut set = BTreeSet::new();
            for code in &self.communes {
                let code =
                    InseeCode::parse(code.trim()).with_context(|| format!("--commune {code}"))?;
                if COMMUNES.get(&code).is_none() {
                    bail!("--commune {code}: no current commune has this INSEE code");
                }
                set.insert(code);
            }
            return Ok(Scope::Communes(set));
        }
        if !self.departments.is_empty() {
            let set = self
                .departments
                .iter()
                .map(|d| {
                    DepartmentCode::parse(d.trim()).with_context(|| format!("--department {d}"))
                })
                .collect::<anyhow::Result<_>>()?;
            return Ok(Scope::Departments(set));
        }
        bail!("give the scope: --commune CODE (repeatable) or --department CODE (repeatable)")
    }

    fn role(&self) -> Role {
        match self.role {
            RoleArg::Editor => Role::Editor,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// A new bearer token.
fn new_token() -> anyhow::Result<String> {
    crate::tokens::new_token().map_err(|e| anyhow::anyhow!("no randomness available: {e}"))
}

/// Opens (and migrates) the database with the configured secrets, and returns
/// the token hasher those secrets imply.
async fn open_store(config: &Config) -> anyhow::Result<(SqlStore, TokenHasher)> {
    let secrets = Secrets::load(config, std::sync::Arc::new(crate::metrics::Metrics::new()))
        .await
        .context("cannot read the secrets (PANNEAU_SECRETS)")?;
    let url = secrets.database_url(&config.database_url());
    let store = SqlStore::connect(&url, &PoolSettings::default())
        .await
        .context("cannot open the database (PANNEAU_DATABASE_URL)")?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    Ok((
        store,
        TokenHasher::new(secrets.get("token_pepper").cloned()),
    ))
}

/// Runs `panneau migrate`.
///
/// # Errors
/// When the database cannot be opened or migrated.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let (store, _) = open_store(config).await?;
    store.close().await;
    eprintln!("database schema is up to date");
    Ok(())
}

/// Runs a `panneau publisher` command.
///
/// # Errors
/// On invalid arguments or when the database fails.
pub async fn publisher(config: &Config, command: PublisherCommand) -> anyhow::Result<()> {
    let (store, hasher) = open_store(config).await?;
    let now = crate::now();
    match command {
        PublisherCommand::Create { name, grant } => {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 200 {
                bail!("--name: 1 to 200 characters");
            }
            let token = new_token()?;
            let new = NewToken {
                hash: hasher.hash(&token),
                role: grant.role(),
                scope: grant.scope()?,
            };
            let (publisher, token_id) = store.create_publisher(name, &new, now).await?;
            eprintln!(
                "publisher {publisher} \"{name}\" created; token {token_id} ({}, {}).\n\
                 The token below is shown once: store it now.",
                new.role.as_str(),
                describe(&new.scope)
            );
            println!("{token}");
        }
        PublisherCommand::Token { publisher, grant } => {
            let publisher = PublisherId::parse(&publisher).context("expected a publisher id")?;
            let token = new_token()?;
            let new = NewToken {
                hash: hasher.hash(&token),
                role: grant.role(),
                scope: grant.scope()?,
            };
            let Some(token_id) = store.add_token(publisher, &new, now).await? else {
                bail!("no publisher {publisher}");
            };
            eprintln!(
                "token {token_id} ({}, {}) added; shown once:",
                new.role.as_str(),
                describe(&new.scope)
            );
            println!("{token}");
        }
        PublisherCommand::List => {
            for publisher in store.list_publishers().await? {
                println!(
                    "{}\t{}\tcreated {}",
                    publisher.id, publisher.name, publisher.created_at
                );
                for token in publisher.tokens {
                    let status = token
                        .revoked_at
                        .map_or_else(|| "active".to_owned(), |at| format!("revoked {at}"));
                    println!(
                        "  token {}\t{}\t{}\t{status}",
                        token.id,
                        token.role.as_str(),
                        describe(&token.scope)
                    );
                }
            }
        }
        PublisherCommand::Revoke { id } => {
            let uuid = uuid::Uuid::try_parse(&id).context("expected a publisher or token id")?;
            let revoked = store.revoke(uuid, now).await?;
            if revoked == 0 {
                bail!("no active token with id {id}, nor a publisher with active tokens");
            }
            eprintln!("{revoked} token(s) revoked");
        }
    }
    store.close().await;
    Ok(())
}

fn describe(scope: &Scope) -> String {
    match scope {
        Scope::Communes(c) => format!(
            "communes {}",
            c.iter()
                .map(InseeCode::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ),
        Scope::Departments(d) => format!(
            "departments {}",
            d.iter()
                .map(DepartmentCode::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Runs `panneau check-config`: prints the effective settings (secrets redacted)
/// and checks data residency.
///
/// # Errors
/// When a place that stores user data is not declared in an EU region (a
/// configuration that does not load is reported by `main`).
pub fn check_config(config: &Config) -> anyhow::Result<()> {
    if config.secrets == SecretsSource::Vault {
        for (setting, present) in [
            ("PANNEAU_VAULT_ADDR", config.vault_addr.is_some()),
            ("PANNEAU_VAULT_ROLE_ID", config.vault_role_id.is_some()),
            (
                "PANNEAU_VAULT_SECRET_ID_FILE",
                config.vault_secret_id.is_some() || config.vault_secret_id_file.is_some(),
            ),
        ] {
            if !present {
                bail!("{setting} is required with PANNEAU_SECRETS=vault");
            }
        }
    }
    let problems = config.residency();
    if !problems.is_empty() {
        for problem in &problems {
            eprintln!("data residency: {problem}");
        }
        bail!(
            "{} data residency problem(s): user data must stay in the European Union",
            problems.len()
        );
    }
    let mode = match config.mode() {
        Mode::Embedded { sqlite_url } => format!("embedded ({sqlite_url})"),
        Mode::Cluster => "cluster".to_owned(),
    };
    println!("configuration is valid");
    println!("mode: {mode}");
    println!("http_addr: {}", config.http_addr);
    println!("ops_addr: {}", config.ops_addr);
    println!(
        "database_url: {}",
        if config
            .database_url
            .as_ref()
            .is_some_and(|u| u.expose_secret().contains('@'))
        {
            "(set, credentials redacted)"
        } else if config.database_url.is_some() {
            "(set)"
        } else {
            "(default)"
        }
    );
    println!(
        "nats_url: {}",
        config.nats_url.as_deref().unwrap_or("(none)")
    );
    let secrets = match config.secrets {
        SecretsSource::Env => "env (PANNEAU_SECRET_*)".to_owned(),
        SecretsSource::File => format!("file ({})", config.secrets_dir.display()),
        SecretsSource::Vault => format!(
            "vault ({}, KV v2 {}/{}, AppRole at auth/{})",
            config.vault_addr.as_deref().unwrap_or_default(),
            config.vault_mount,
            config.vault_path,
            config.vault_approle_mount
        ),
    };
    println!("secrets: {secrets}");
    println!("data residency: ok");
    Ok(())
}

/// Runs `panneau replay PROJECTION` or `panneau replay [PROJECTION] --verify`.
///
/// # Errors
/// When the replay fails (the live generation is left as it was), or when
/// `--verify` finds differences.
pub async fn replay(config: &Config, args: &ReplayArgs) -> anyhow::Result<()> {
    if config.mode() != Mode::Cluster {
        return crate::replay::embedded_refusal();
    }
    let projections = match (args.projection, args.verify) {
        (Some(projection), _) => vec![projection],
        (None, true) => vec![Projection::Feeds, Projection::Stats],
        (None, false) => bail!("name the read model to rebuild: panneau replay feeds|stats"),
    };
    let nats_url = config
        .nats_url
        .as_deref()
        .context("PANNEAU_NATS_URL is required in cluster mode")?;
    let (store, _) = open_store(config).await?;
    let client = crate::bus::jetstream::connect(nats_url).await?;
    let context = async_nats::jetstream::new(client);
    let mut failed = Vec::new();
    for projection in projections {
        let (model, label) = (projection.model(), projection.label());
        if args.verify {
            let (generation, live) = crate::replay::live_model(&context, model).await?;
            let (compared, differences) = crate::replay::verify(model, &store, &live).await?;
            for difference in differences.iter().take(50) {
                println!("{}\t{}", difference.key, difference.what);
            }
            if differences.is_empty() {
                println!(
                    "{label} generation {generation}: {compared} documents match the event log"
                );
            } else {
                failed.push(format!(
                    "{label} generation {generation}: {} of {compared} documents differ from the event log",
                    differences.len()
                ));
            }
        } else {
            let report =
                crate::replay::replay(model, &store, &context, config.nats_replicas).await?;
            println!(
                "replayed {} events into {} documents of {label} generation {}: switched after {:.1} s ({:.0} events/s), done after {:.1} s",
                report.events,
                report.documents,
                report.generation,
                report.until_switch.as_secs_f64(),
                report.events_per_second(),
                report.elapsed.as_secs_f64(),
            );
        }
    }
    if !failed.is_empty() {
        store.close().await;
        bail!("{}", failed.join("; "));
    }
    store.close().await;
    Ok(())
}

/// Runs `panneau export [FILE]`.
///
/// # Errors
/// When the database cannot be read or the file written.
pub async fn export(config: &Config, output: Option<&Path>) -> anyhow::Result<()> {
    let (store, _) = open_store(config).await?;
    let (mut out, name): (Box<dyn Write + Send>, String) = match output {
        Some(path) if path != Path::new("-") => (
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            )),
            path.display().to_string(),
        ),
        _ => (
            Box::new(std::io::BufWriter::new(std::io::stdout())),
            "standard output".to_owned(),
        ),
    };
    let counts = crate::store::archive::export(&store, &mut |record| {
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")
    })
    .await
    .context("export failed")?;
    out.flush().context("cannot write the export")?;
    store.close().await;
    eprintln!("exported {counts} to {name}");
    Ok(())
}

/// Runs `panneau import FILE`: checks the whole file, then imports it.
///
/// # Errors
/// When the file is unreadable, malformed, truncated or of another format
/// (nothing is written then), or when the database refuses a record.
pub async fn import(config: &Config, input: &Path) -> anyhow::Result<()> {
    use crate::store::archive::{Counts, Record};

    // Standard input can be read once: it is kept for the second pass.
    let stdin = if input == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .context("cannot read standard input")?;
        Some(bytes)
    } else {
        None
    };
    let open = || -> anyhow::Result<Box<dyn BufRead + '_>> {
        Ok(match &stdin {
            Some(bytes) => Box::new(bytes.as_slice()),
            None => Box::new(std::io::BufReader::new(
                std::fs::File::open(input)
                    .with_context(|| format!("cannot open {}", input.display()))?,
            )),
        })
    };
    let parse = |number: u64, line: std::io::Result<String>| -> anyhow::Result<Record> {
        let line = line.with_context(|| format!("cannot read line {number}"))?;
        serde_json::from_str(&line).with_context(|| format!("line {number}: not a record"))
    };

    // First pass: every record checks, the header comes first and the counts
    // of the last line match, so a truncated or foreign file writes nothing.
    let mut counts = Counts::default();
    let mut expected = None;
    for (index, line) in (1..).zip(open()?.lines()) {
        let record = parse(index, line)?;
        if expected.is_some() {
            bail!("line {index}: records after the end of the export");
        }
        if (index == 1) != matches!(record, Record::Header(_)) {
            bail!(
                "line {index}: an export starts with its header, once (is this a panneau export?)"
            );
        }
        record
            .check()
            .map_err(|reason| anyhow::anyhow!("line {index}: {reason}"))?;
        if let Record::End(end) = record {
            expected = Some(end);
        } else {
            counts.add(&record);
        }
    }
    match expected {
        None => bail!("the export is incomplete (no end record): was it cut short?"),
        Some(end) if end != counts => {
            bail!("the export is incomplete: it announces {end} but holds {counts}")
        }
        Some(_) => {}
    }

    let (store, _) = open_store(config).await?;
    // Second pass, streamed: the records were checked above.
    let records = (1..)
        .zip(open()?.lines())
        .filter_map(|(index, line)| parse(index, line).ok());
    let report = crate::store::archive::import(&store, records)
        .await
        .context("import stopped (what was imported before stays; run it again once fixed)")?;
    let mut seen = report.imported;
    seen.merge(&report.already_present);
    if seen != counts {
        bail!(
            "{} changed during the import: run it again",
            input.display()
        );
    }
    store.close().await;
    eprintln!(
        "imported {}; already present: {}",
        report.imported, report.already_present
    );
    Ok(())
}
