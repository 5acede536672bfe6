//! mTLS and authorization resources, the CA's roots and issued certificates.

use leptos::prelude::*;
use serde_json::Value;

use crate::{api, fetch_into, loaded, text};

#[component]
pub fn Security() -> impl IntoView {
    let peer = RwSignal::new(None::<api::Result<Value>>);
    let authz = RwSignal::new(None::<api::Result<Value>>);
    let ca = RwSignal::new(None::<api::Result<Value>>);
    let certs = RwSignal::new(None::<api::Result<Value>>);
    fetch_into(peer, "/api/v1/peerauthentications".into());
    fetch_into(authz, "/api/v1/authorizationpolicies".into());
    fetch_into(ca, "/api/v1/ca".into());
    fetch_into(certs, "/api/v1/certificates".into());
    let names = |v: Value, what: &'static str, field: &'static str| {
        let items: Vec<Value> = v["items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return view! { <p class="empty">{format!("No {what}. Apply one with meshgate apply -f.")}</p> }.into_any();
        }
        let rows = items.iter().map(|i| view! {
            <tr><td>{text(&i["metadata"]["namespace"])}</td><td>{text(&i["metadata"]["name"])}</td><td>{text(&i["spec"][field])}</td></tr>
        }).collect_view();
        view! { <table><thead><tr><th>"Namespace"</th><th>"Name"</th><th>{field}</th></tr></thead><tbody>{rows}</tbody></table> }.into_any()
    };
    view! {
        <h1>"Security"</h1>
        <section class="panel"><h2 style="margin-top:0">"mTLS (PeerAuthentication)"</h2>
            {loaded(peer, move |v| names(v, "PeerAuthentications: mTLS is PERMISSIVE everywhere", "mtls"))}</section>
        <section class="panel"><h2 style="margin-top:0">"Authorization policies"</h2>
            {loaded(authz, move |v| names(v, "AuthorizationPolicies: every authenticated call is allowed", "action"))}</section>
        <section class="panel"><h2 style="margin-top:0">"Certificate authority"</h2>
            {loaded(ca, |v| view! { <pre class="diff">{serde_json::to_string_pretty(&v).unwrap_or_default()}</pre> })}</section>
        <section class="panel"><h2 style="margin-top:0">"Issued certificates"</h2>
            {loaded(certs, |v| {
                let items: Vec<Value> = v["certificates"].as_array().or(v["items"].as_array()).cloned().unwrap_or_default();
                let rows = items.iter().map(|c| view! {
                    <tr><td>{text(&c["spiffeId"])}</td><td>{text(&c["notAfter"])}</td><td>{text(&c["serial"])}</td></tr>
                }).collect_view();
                view! { <div class="table-wrap"><table><thead><tr><th>"Identity"</th><th>"Expires"</th><th>"Serial"</th></tr></thead><tbody>{rows}</tbody></table></div> }
            })}</section>
    }
}
