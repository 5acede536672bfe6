//! proxy-status: every proxy, the revision it runs, and its effective config.

use std::time::Duration;

use leptos::prelude::*;
use serde_json::Value;

use crate::{api, every, fetch_into, loaded, text, unloaded};

#[component]
pub fn Proxies() -> impl IntoView {
    let data = unloaded();
    every(Duration::from_secs(3), move || fetch_into(data, "/api/v1/proxy-status".into()));
    let config = unloaded();
    let open = RwSignal::new(None::<String>);
    view! {
        <h1>"Proxies"</h1>
        {loaded(data, move |v| {
            let proxies: Vec<Value> = v["proxies"].as_array().cloned().unwrap_or_default();
            let rows = proxies.iter().map(|p| {
                let name = text(&p["name"]);
                let status = text(&p["status"]);
                let class = if status == "SYNCED" { "badge ok" } else { "badge warn" };
                let sidecar = p["role"].as_str() == Some("sidecar");
                let n2 = name.clone();
                view! {
                    <tr>
                        <td>{name.clone()}</td>
                        <td>{text(&p["role"])}</td>
                        <td>{text(&p["revision"])}</td>
                        <td><span class=class>{status}</span></td>
                        <td>{sidecar.then(|| view! {
                            <button on:click=move |_| {
                                open.set(Some(n2.clone()));
                                fetch_into(config, format!("/api/v1/proxy-config/{}", api::escape(&n2)));
                            }>"Config"</button>
                        })}</td>
                    </tr>
                }
            }).collect_view();
            view! {
                <div class="panel table-wrap">
                    <table id="proxies">
                        <thead><tr><th>"Proxy"</th><th>"Role"</th><th>"Revision"</th><th>"Status"</th><th></th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                </div>
            }
        })}
        {move || open.get().map(|name| view! {
            <section class="panel">
                <h2 style="margin-top:0">{format!("Effective config of {name}")}</h2>
                {loaded(config, |c| view! { <pre class="diff">{serde_json::to_string_pretty(&c).unwrap_or_default()}</pre> })}
            </section>
        })}
    }
}
