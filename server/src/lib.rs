//! meshgate: an edge API gateway, a service mesh and its control plane in
//! one binary. `main.rs` only calls [`cli::main`]; everything lives here so
//! tests can run servers in-process.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod ca;
pub mod cli;
pub mod config;
pub mod control;
pub mod labels;
pub mod mesh;
pub mod proxy;
pub mod server;
pub mod store;
pub mod telemetry;

/// Logs to stderr; `MESHGATE_LOG` sets the filter (default `info`),
/// `MESHGATE_LOG_FORMAT=json` switches to JSON lines.
pub fn telemetry_init() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MESHGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if std::env::var("MESHGATE_LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
