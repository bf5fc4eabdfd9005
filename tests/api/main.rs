//! The one integration-test binary: the API and the CLI driven from outside,
//! against a real instance with its own database per test.

mod bad_input;
mod cli;
mod cluster;
mod communes;
#[path = "../support/fake_push.rs"]
mod fake_push;
#[path = "../support/fake_vault.rs"]
mod fake_vault;
mod helpers;
mod infra;
mod ops;
mod publishing;
mod push;
mod reading;
mod replay;
mod secrets;
mod store;
