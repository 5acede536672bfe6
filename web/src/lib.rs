//! The meshgate web console. A placeholder until the console issue builds the
//! Leptos app; it already depends on `meshgate-model` so the console validates
//! input with the same code as the server.
#![forbid(unsafe_code)]

/// The resource kinds the console will offer editors for.
pub fn editable_kinds() -> Vec<&'static str> {
    meshgate_model::Kind::ALL.iter().map(|k| k.name()).collect()
}
