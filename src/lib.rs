//! Panneau: the backend of a municipal information service.
//!
//! See `../shared/ARCHITECTURE.md` for the shape (event-sourced CQRS) and
//! `docs/adr/` for the decisions behind it. The pure rules live in the
//! `panneau-domain` and `panneau-projections` crates; this crate holds the
//! adapters (stores, bus, read model), the HTTP edge and the command line.

pub mod api;
pub mod app;
pub mod bus;
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod health;
pub mod metrics;
pub mod notifier;
pub mod overlay;
pub mod projector;
pub mod push;
pub mod readmodel;
pub mod replay;
pub mod scheduler;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod subscription;
pub mod telemetry;
pub mod tokens;

use panneau_domain::Timestamp;

/// The current time: the one place Panneau reads the clock.
pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_unix_micros(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
}

/// Installs the TLS crypto provider (ring) that reqwest, a2, Sentry and vaultrs
/// use through rustls. Idempotent.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
