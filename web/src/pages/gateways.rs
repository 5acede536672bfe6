//! Gateways and the API edge: listeners and their certificates, consumers
//! and API keys (a new key is shown once), rate limits, JWT providers.

use leptos::prelude::*;
use serde_json::{Value, json};

use crate::{api, fetch_into, fetched, items, loaded, me, text, when_loaded};

#[component]
pub fn Gateways() -> impl IntoView {
    let gateways = fetched("/api/v1/gateways");
    let status = fetched("/api/v1/proxy-status");
    let consumers = fetched("/api/v1/consumers");
    let keys = fetched("/api/v1/apikeys");
    let limits = fetched("/api/v1/ratelimitpolicies");
    let jwt = fetched("/api/v1/requestauthentications");
    let can_edit = me().can_edit();
    let new_key = RwSignal::new(None::<Result<Value, api::Error>>);
    let make_key = move |ns: String, consumer: String| {
        leptos::task::spawn_local(async move {
            let r = api::post("/api/v1/apikeys", &json!({"consumer": consumer, "namespace": ns})).await;
            new_key.set(Some(r));
            fetch_into(keys, "/api/v1/apikeys".into());
        });
    };
    let revoke = move |id: String| {
        leptos::task::spawn_local(async move {
            if let Err(e) = api::delete(&format!("/api/v1/apikeys/{}", api::escape(&id))).await {
                new_key.set(Some(Err(e)));
            }
            fetch_into(keys, "/api/v1/apikeys".into());
        });
    };
    let page = move || {
        view! {
            <section class="panel">
                <h2 style="margin-top:0">"Listeners"</h2>
                {loaded(gateways, move |g| {
                    let listening: Vec<Value> = match status.get() {
                        Some(Ok(s)) => s["listeners"].as_array().cloned().unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    let rows = items(&g).into_iter().flat_map(|gw| {
                        let id = format!("{}/{}", text(&gw["metadata"]["namespace"]), text(&gw["metadata"]["name"]));
                        let listening = listening.clone();
                        gw["spec"]["servers"].as_array().cloned().unwrap_or_default().into_iter().map(move |s| {
                            let port = s["port"]["number"].as_i64().unwrap_or(0);
                            let at = listening.iter().find(|l| l["port"].as_i64() == Some(port)).map_or_else(|| "not listening".to_string(), |l| text(&l["address"]));
                            let hosts = s["hosts"].as_array().map(|h| h.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                            let tls = match s["tls"]["mode"].as_str() {
                                Some(mode) => format!("{mode} {}", s["tls"]["credentialName"].as_str().unwrap_or("")),
                                None => "-".into(),
                            };
                            view! {
                                <tr><td>{id.clone()}</td><td>{format!("{port} {}", text(&s["port"]["protocol"]))}</td><td>{at}</td><td>{hosts}</td><td>{tls}</td></tr>
                            }
                        })
                    }).collect_view();
                    view! {
                        <div class="table-wrap"><table id="listeners">
                            <thead><tr><th>"Gateway"</th><th>"Port"</th><th>"Served at"</th><th>"Hosts"</th><th>"TLS (certificate)"</th></tr></thead>
                            <tbody>{rows}</tbody>
                        </table></div>
                    }
                })}
            </section>
            <section class="panel">
                <h2 style="margin-top:0">"Consumers and API keys"</h2>
                {move || new_key.get().map(|r| match r {
                    Ok(k) => view! { <p role="status">"New key for "{text(&k["consumer"])}" (copy it now, it is not shown again): "<code id="key-once">{text(&k["key"])}</code></p> }.into_any(),
                    Err(e) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
                })}
                {loaded(consumers, move |c| {
                    let list = items(&c);
                    if list.is_empty() {
                        return view! { <p class="empty">"No consumers. Apply a Consumer (meshgate.io/v1) to give API clients keys."</p> }.into_any();
                    }
                    let all_keys: Vec<Value> = match keys.get() {
                        Some(Ok(k)) => items(&k),
                        _ => Vec::new(),
                    };
                    list.into_iter().map(|c| {
                        let (ns, name) = (text(&c["metadata"]["namespace"]), text(&c["metadata"]["name"]));
                        let mine: Vec<Value> = all_keys.iter().filter(|k| k["namespace"].as_str() == Some(&ns) && k["consumer"].as_str() == Some(&name) && k["revokedAt"].is_null()).cloned().collect();
                        let key_rows = mine.into_iter().map(|k| {
                            let id = text(&k["id"]);
                            let id2 = id.clone();
                            view! {
                                <li><code>{format!("{}…", text(&k["prefix"]))}</code>" made "{text(&k["createdAt"])}
                                    {can_edit.then(|| view! { " "<button class="danger" on:click=move |_| revoke(id2.clone()) aria-label=format!("Revoke key {id}")>"Revoke"</button> })}
                                </li>
                            }
                        }).collect_view();
                        let (ns2, name2) = (ns.clone(), name.clone());
                        view! {
                            <div class="consumer">
                                <strong>{format!("{ns}/{name}")}</strong>
                                {can_edit.then(|| view! { " "<button on:click=move |_| make_key(ns2.clone(), name2.clone())>"New key"</button> })}
                                <ul>{key_rows}</ul>
                            </div>
                        }
                    }).collect_view().into_any()
                })}
            </section>
            <section class="panel">
                <h2 style="margin-top:0">"Rate limits"</h2>
                {loaded(limits, |l| {
                    let list = items(&l);
                    if list.is_empty() {
                        return view! { <p class="empty">"No RateLimitPolicies: requests are not limited."</p> }.into_any();
                    }
                    let rows = list.into_iter().map(|p| {
                        let targets = p["spec"]["targetRefs"].as_array().map(|t| t.iter().map(|r| format!("{} {}", text(&r["kind"]), text(&r["name"]))).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                        let limits = p["spec"]["limits"].as_array().map(|ls| ls.iter().map(|x| format!("{} per {}", text(&x["requests"]), x["per"].as_str().unwrap_or("minute"))).collect::<Vec<_>>().join("; ")).unwrap_or_default();
                        view! { <tr><td>{format!("{}/{}", text(&p["metadata"]["namespace"]), text(&p["metadata"]["name"]))}</td><td>{targets}</td><td>{limits}</td></tr> }
                    }).collect_view();
                    view! { <table><thead><tr><th>"Policy"</th><th>"Applies to"</th><th>"Limits"</th></tr></thead><tbody>{rows}</tbody></table> }.into_any()
                })}
            </section>
            <section class="panel">
                <h2 style="margin-top:0">"JWT providers"</h2>
                {loaded(jwt, |j| {
                    let list = items(&j);
                    if list.is_empty() {
                        return view! { <p class="empty">"No RequestAuthentications: JWTs are not checked."</p> }.into_any();
                    }
                    let rows = list.into_iter().flat_map(|r| {
                        let id = format!("{}/{}", text(&r["metadata"]["namespace"]), text(&r["metadata"]["name"]));
                        r["spec"]["jwtRules"].as_array().cloned().unwrap_or_default().into_iter().map(move |rule| view! {
                            <tr><td>{id.clone()}</td><td>{text(&rule["issuer"])}</td><td>{rule["jwksUri"].as_str().map_or_else(|| if rule["jwks"].is_null() { "-".to_string() } else { "inline JWKS".to_string() }, str::to_string)}</td></tr>
                        })
                    }).collect_view();
                    view! { <table><thead><tr><th>"Policy"</th><th>"Issuer"</th><th>"Keys"</th></tr></thead><tbody>{rows}</tbody></table> }.into_any()
                })}
            </section>
        }
    };
    view! {
        <h1>"Gateways and API"</h1>
        {when_loaded(vec![gateways, status, consumers, keys, limits, jwt], page)}
    }
}
