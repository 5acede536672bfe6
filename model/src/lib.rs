//! meshgate's resource model: Istio's schema (`Gateway`, `VirtualService`,
//! `DestinationRule`, ...) plus meshgate's own kinds, with validation that
//! names every bad field by path, and the cross-resource analyzer.
//!
//! No I/O here: this crate builds for wasm32 so the console checks input
//! with the same code as the server.
#![forbid(unsafe_code)]

pub mod analyze;
pub mod check;
pub mod hosts;
pub mod kind;
pub mod networking;
pub mod parse;
pub mod policy;
pub mod resource;
pub mod security;
pub mod suggest;
pub mod support;
pub mod telemetry;
pub mod transcode;

pub use check::FieldError;
pub use kind::Kind;
pub use parse::{Problem, decode};
pub use resource::{Body, DEFAULT_NAMESPACE, ObjectMeta, Resource};
