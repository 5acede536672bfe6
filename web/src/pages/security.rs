//! mTLS per namespace (PeerAuthentication), authorization policies, the
//! CA's roots and issued certificates with expiry, join tokens.

use leptos::prelude::*;
use serde_json::{Value, json};

use crate::{api, fetch_into, fetched, items, loaded, me, text, when_loaded};

#[component]
pub fn Security() -> impl IntoView {
    let peer = fetched("/api/v1/peerauthentications");
    let authz = fetched("/api/v1/authorizationpolicies");
    let ca = fetched("/api/v1/ca");
    let certs = fetched("/api/v1/certificates");
    let tokens = fetched("/api/v1/tokens");
    let can_edit = me().can_edit();

    // Namespace-wide mTLS: the PeerAuthentication named `default` there, as Istio's docs write it.
    let mtls_ns = RwSignal::new("default".to_string());
    let mtls_mode = RwSignal::new("STRICT".to_string());
    let mtls_result = RwSignal::new(None::<Result<String, api::Error>>);
    let set_mtls = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let (ns, mode) = (mtls_ns.get_untracked().trim().to_string(), mtls_mode.get_untracked());
        let doc = json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": ns}, "spec": {"mtls": {"mode": mode}},
        });
        leptos::task::spawn_local(async move {
            let url = format!("/api/v1/namespaces/{}/peerauthentications/default", api::escape(&ns));
            let r = api::put(&url, &doc).await.map(|_| format!("mTLS in {ns} is now {mode}."));
            mtls_result.set(Some(r));
            fetch_into(peer, "/api/v1/peerauthentications".into());
        });
    };

    let token_service = RwSignal::new(String::new());
    let token_ns = RwSignal::new("default".to_string());
    let token_ttl = RwSignal::new("1h".to_string());
    let new_token = RwSignal::new(None::<Result<Value, api::Error>>);
    let make_token = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body = json!({"service": token_service.get_untracked().trim(), "namespace": token_ns.get_untracked().trim(), "ttl": token_ttl.get_untracked().trim()});
        leptos::task::spawn_local(async move {
            new_token.set(Some(api::post("/api/v1/tokens", &body).await));
            fetch_into(tokens, "/api/v1/tokens".into());
        });
    };
    let revoke = move |id: String| {
        leptos::task::spawn_local(async move {
            if let Err(e) = api::delete(&format!("/api/v1/tokens/{}", api::escape(&id))).await {
                new_token.set(Some(Err(e)));
            }
            fetch_into(tokens, "/api/v1/tokens".into());
        });
    };
    let page = move || {
        view! {
            <section class="panel"><h2 style="margin-top:0">"mTLS per namespace"</h2>
                {loaded(peer, |v| {
                    let list = items(&v);
                    if list.is_empty() {
                        return view! { <p class="empty">"No PeerAuthentication: sidecars take both mTLS and plain text (PERMISSIVE)."</p> }.into_any();
                    }
                    let rows = list.iter().map(|p| view! {
                        <tr><td>{text(&p["metadata"]["namespace"])}</td><td>{text(&p["metadata"]["name"])}</td>
                            <td>{if p["spec"]["selector"].is_null() { "whole namespace".to_string() } else { p["spec"]["selector"].to_string() }}</td>
                            <td>{text(&p["spec"]["mtls"]["mode"])}</td></tr>
                    }).collect_view();
                    view! { <table id="mtls"><thead><tr><th>"Namespace"</th><th>"Name"</th><th>"Applies to"</th><th>"Mode"</th></tr></thead><tbody>{rows}</tbody></table> }.into_any()
                })}
                {can_edit.then(|| view! {
                    <form class="row" on:submit=set_mtls style="margin-top:10px">
                        <div class="field"><label for="mtls-ns">"Namespace"</label>
                            <input id="mtls-ns" prop:value=move || mtls_ns.get() on:input=move |ev| mtls_ns.set(event_target_value(&ev))/></div>
                        <div class="field"><label for="mtls-mode">"Mode"</label>
                            <select id="mtls-mode" on:change=move |ev| mtls_mode.set(event_target_value(&ev))>
                                <option value="STRICT">"STRICT (mTLS only)"</option><option value="PERMISSIVE">"PERMISSIVE"</option><option value="DISABLE">"DISABLE"</option>
                            </select></div>
                        <button type="submit" class="primary" id="set-mtls">"Set"</button>
                    </form>
                })}
                {move || mtls_result.get().map(|r| match r {
                    Ok(m) => view! { <p class="ok" role="status">{m}</p> }.into_any(),
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                })}
            </section>
            <section class="panel"><h2 style="margin-top:0">"Authorization policies"</h2>
                {loaded(authz, |v| {
                    let list = items(&v);
                    if list.is_empty() {
                        return view! { <p class="empty">"No AuthorizationPolicies: every call is allowed."</p> }.into_any();
                    }
                    let rows = list.iter().map(|p| view! {
                        <tr><td>{text(&p["metadata"]["namespace"])}</td><td>{text(&p["metadata"]["name"])}</td>
                            <td>{p["spec"]["action"].as_str().unwrap_or("ALLOW").to_string()}</td>
                            <td>{p["spec"]["rules"].as_array().map_or(0, Vec::len)}" rules"</td></tr>
                    }).collect_view();
                    view! { <table><thead><tr><th>"Namespace"</th><th>"Name"</th><th>"Action"</th><th>"Rules"</th></tr></thead><tbody>{rows}</tbody></table> }.into_any()
                })}
            </section>
            <section class="panel"><h2 style="margin-top:0">"Certificate authority"</h2>
                {loaded(ca, |v| {
                    let roots = v["bundle"].as_array().cloned().unwrap_or_default().into_iter().map(|r| view! {
                        <tr><td><code>{text(&r["fingerprint"])}</code></td>
                            <td>{if r["signing"].as_bool().unwrap_or(false) { "signs new certificates" } else { "trusted" }}</td>
                            <td>{text(&r["createdAt"])}</td><td>{text(&r["notAfter"])}</td></tr>
                    }).collect_view();
                    view! {
                        <p>"Trust domain "<code>{text(&v["trustDomain"])}</code>
                            {if v["pluggedIn"].as_bool().unwrap_or(false) { " · a plug-in CA (--ca-cert)" } else { " · meshgate's own root" }}</p>
                        <div class="table-wrap"><table id="ca-roots">
                            <thead><tr><th>"Root"</th><th>"Role"</th><th>"Made"</th><th>"Expires"</th></tr></thead>
                            <tbody>{roots}</tbody>
                        </table></div>
                        <p class="muted">"Agents pin the root with --ca-fingerprint; rotate it with meshgate ca rotate or POST /api/v1/ca/rotate."</p>
                    }
                })}
            </section>
            <section class="panel"><h2 style="margin-top:0">"Issued certificates"</h2>
                {loaded(certs, |v| {
                    let list = items(&v);
                    if list.is_empty() {
                        return view! { <p class="empty">"None issued yet: agents get theirs when they join."</p> }.into_any();
                    }
                    let rows = list.iter().take(200).map(|c| view! {
                        <tr><td>{text(&c["identity"])}</td><td>{text(&c["issuedAt"])}</td><td>{text(&c["notAfter"])}</td><td><code>{text(&c["serial"])}</code></td></tr>
                    }).collect_view();
                    view! { <div class="table-wrap"><table id="certificates"><thead><tr><th>"Identity"</th><th>"Issued"</th><th>"Expires"</th><th>"Serial"</th></tr></thead><tbody>{rows}</tbody></table></div> }.into_any()
                })}
            </section>
            <section class="panel"><h2 style="margin-top:0">"Join tokens"</h2>
                {move || new_token.get().map(|r| match r {
                    Ok(t) => view! {
                        <p role="status">"Token (shown once): "<code id="join-token">{text(&t["token"])}</code><br/>
                        <code>{format!("meshgate agent --join https://HOST:15012 --token {} --ca-fingerprint {} --service {} -n {} --app 127.0.0.1:PORT", text(&t["token"]), text(&t["caFingerprint"]), text(&t["service"]), text(&t["namespace"]))}</code></p>
                    }.into_any(),
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                })}
                {loaded(tokens, move |v| {
                    let list = items(&v);
                    if list.is_empty() {
                        return view! { <p class="empty">"No join tokens. Make one below for each service's agents."</p> }.into_any();
                    }
                    let rows = list.iter().map(|t| {
                        let id = text(&t["id"]);
                        let id2 = id.clone();
                        let live = t["revokedAt"].is_null();
                        view! {
                            <tr><td>{format!("{}/{}", text(&t["namespace"]), text(&t["service"]))}</td><td>{text(&t["expiresAt"])}</td><td>{text(&t["uses"])}</td>
                                <td>{if live { "live".to_string() } else { format!("revoked {}", text(&t["revokedAt"])) }}</td>
                                <td>{(can_edit && live).then(|| view! { <button class="danger" on:click=move |_| revoke(id2.clone()) aria-label=format!("Revoke join token {id}")>"Revoke"</button> })}</td></tr>
                        }
                    }).collect_view();
                    view! { <table id="join-tokens"><thead><tr><th>"Service"</th><th>"Expires"</th><th>"Uses"</th><th>"State"</th><th></th></tr></thead><tbody>{rows}</tbody></table> }.into_any()
                })}
                {can_edit.then(|| view! {
                    <form class="row" on:submit=make_token style="margin-top:10px">
                        <div class="field"><label for="jt-service">"Service"</label>
                            <input id="jt-service" required prop:value=move || token_service.get() on:input=move |ev| token_service.set(event_target_value(&ev))/></div>
                        <div class="field"><label for="jt-ns">"Namespace"</label>
                            <input id="jt-ns" prop:value=move || token_ns.get() on:input=move |ev| token_ns.set(event_target_value(&ev))/></div>
                        <div class="field"><label for="jt-ttl">"Valid for"</label>
                            <input id="jt-ttl" prop:value=move || token_ttl.get() on:input=move |ev| token_ttl.set(event_target_value(&ev))/></div>
                        <button type="submit" class="primary" id="make-join-token">"New join token"</button>
                    </form>
                })}
            </section>
        }
    };
    view! {
        <h1>"Security"</h1>
        {when_loaded(vec![peer, authz, ca, certs, tokens], page)}
    }
}
