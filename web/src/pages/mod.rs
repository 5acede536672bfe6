//! The console's pages, one module each.

pub mod gateways;
pub mod history;
pub mod overview;
pub mod proxies;
pub mod routes;
pub mod security;
pub mod services;
pub mod traces;
pub mod users;
