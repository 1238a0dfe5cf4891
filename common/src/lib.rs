//! What every Quartet role shares, and the only place it lives.
//!
//! A role binary is `main` → [`cli::main`] → the role crate's `run(config, listeners, shutdown)`.
//! Everything around that call (choosing the environment, layering configuration, TLS,
//! logging, metrics, binding listeners, signals) is here so that the four roles, `quartet up`
//! and the tests all start a role the same way.

pub mod cli;
pub mod clock;
pub mod config;
pub mod environment;
pub mod framing;
pub mod http;
pub mod listeners;
pub mod metrics;
pub mod proxy;
pub mod role;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

#[cfg(feature = "test-support")]
pub mod testing;

pub use config::Config;
pub use environment::Environment;
pub use listeners::Listeners;
pub use role::Role;
pub use secret::Secret;
pub use shutdown::Shutdown;
