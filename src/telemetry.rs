//! Logs: JSON lines on stdout in production (ready for promtail/Loki), readable
//! text in a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(std::io::stdout);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    // A second initialisation (tests) keeps the first subscriber.
    drop(result);
}

/// Starts reporting to Sentry when a DSN is configured. Keep the guard alive for
/// the life of the process: it flushes pending reports when dropped.
///
/// Panics are reported by the panic integration; server errors by
/// [`report_server_error`], once, from the request middleware. Nothing personal is
/// sent: no request bodies, headers, addresses or user data.
pub fn init_sentry(dsn: Option<&str>, environment: &str) -> Option<sentry::ClientInitGuard> {
    let dsn = dsn?;
    let mut options = sentry::ClientOptions::default();
    options.dsn = match dsn.parse() {
        Ok(dsn) => Some(dsn),
        Err(error) => {
            tracing::error!(%error, "PANNEAU_SENTRY_DSN is not a valid DSN; errors will not be reported");
            return None;
        }
    };
    options.release = Some(concat!("panneau@", env!("CARGO_PKG_VERSION")).into());
    options.environment = Some(environment.to_owned().into());
    options.send_default_pii = false;
    // Belt and braces: whatever an integration attached about the request or the
    // user does not leave.
    options.before_send = Some(std::sync::Arc::new(|mut event| {
        event.request = None;
        event.user = None;
        Some(event)
    }));
    Some(sentry::init(options))
}

/// Reports a server error (a 5xx answer) to Sentry, with the request id and route.
pub fn report_server_error(chain: &str, request_id: &str, route: &str, status: u16) {
    sentry::with_scope(
        |scope| {
            scope.set_tag("request_id", request_id);
            scope.set_tag("route", route);
            scope.set_tag("status", status.to_string());
        },
        || sentry::capture_message(chain, sentry::Level::Error),
    );
}
