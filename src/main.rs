//! The `panneau` binary: parses the command line, loads the configuration, runs.

use anyhow::Context;
use clap::Parser;
use panneau::app::{Application, shutdown_signal};
use panneau::cli::{self, Cli, Commands};
use panneau::config::Config;

fn main() -> anyhow::Result<()> {
    panneau::install_crypto();
    let cli = Cli::parse();
    let config = Config::load().context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command.unwrap_or(Commands::Serve) {
            Commands::Serve => {
                panneau::telemetry::init(config.log_format, &config.log_level);
                let _sentry = panneau::telemetry::init_sentry(
                    config.sentry_dsn.as_ref().map(secrecy::ExposeSecret::expose_secret),
                    &config.environment,
                );
                let app = Application::build(config).await?;
                tracing::info!(http = %app.http_addr(), ops = %app.ops_addr(), "panneau is serving");
                app.run_until_stopped(shutdown_signal()).await
            }
            Commands::Migrate => cli::migrate(&config).await,
            Commands::Publisher(command) => cli::publisher(&config, command).await,
            Commands::CheckConfig => cli::check_config(&config),
            Commands::Replay(args) => cli::replay(&config, &args).await,
            Commands::Export { output } => cli::export(&config, output.as_deref()).await,
            Commands::Import { input } => cli::import(&config, &input).await,
        }
    })
}
