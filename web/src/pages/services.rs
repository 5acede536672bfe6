//! Services: the list (ServiceEntries and the agents' services), and one
//! service's versions and instances (health, locality, agent, certificate
//! expiry), its rate, errors and latency per version over a chosen window
//! (a slow point links to its traces), and the routes and policies that
//! name it.

use std::time::Duration;

use leptos::prelude::*;
use leptos_router::hooks::use_params_map;
use serde_json::Value;

use crate::{api, every, fetch_into, fetched, loaded, rate, text, unloaded, when_loaded};

#[component]
pub fn ServiceList() -> impl IntoView {
    let entries = fetched("/api/v1/serviceentries");
    let proxies = fetched("/api/v1/proxy-status");
    view! {
        <h1>"Services"</h1>
        {loaded(entries, move |e| {
            // (namespace, name) from ServiceEntries' hosts and the agents' services.
            let mut all: Vec<(String, String, &'static str)> = Vec::new();
            for se in e["items"].as_array().cloned().unwrap_or_default() {
                let ns = text(&se["metadata"]["namespace"]);
                for h in se["spec"]["hosts"].as_array().cloned().unwrap_or_default() {
                    let h = text(&h);
                    all.push((ns.clone(), h.split('.').next().unwrap_or(&h).to_string(), "ServiceEntry"));
                }
            }
            if let Some(Ok(p)) = proxies.get() {
                for a in p["proxies"].as_array().cloned().unwrap_or_default() {
                    if a["role"] == "sidecar" {
                        all.push((text(&a["namespace"]), text(&a["service"]), "agents"));
                    }
                }
            }
            all.sort();
            all.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
            if all.is_empty() {
                return view! { <p class="empty">"No services yet. Start an agent with meshgate agent, or apply a ServiceEntry with WorkloadEntries."</p> }.into_any();
            }
            let rows = all.into_iter().map(|(ns, name, from)| {
                let href = format!("/services/{ns}/{name}");
                view! { <tr><td><a href=href>{name}</a></td><td>{ns}</td><td class="muted">{from}</td></tr> }
            }).collect_view();
            view! {
                <div class="panel table-wrap">
                    <table id="services"><thead><tr><th>"Service"</th><th>"Namespace"</th><th>"Known from"</th></tr></thead><tbody>{rows}</tbody></table>
                </div>
            }.into_any()
        })}
    }
}

/// Whether `host` (short, `name.ns` or a full name) is the service `name` in `ns`.
fn is_service(host: &str, ns: &str, name: &str) -> bool {
    host == name || host == format!("{name}.{ns}") || host.starts_with(&format!("{name}.{ns}.svc."))
}

#[component]
pub fn ServiceView() -> impl IntoView {
    let params = use_params_map();
    let ns = params.read_untracked().get("ns").unwrap_or_default();
    let name = params.read_untracked().get("name").unwrap_or_default();
    let window = RwSignal::new("15m".to_string());
    let n = api::escape(&ns);
    let stats = unloaded();
    let entries = fetched(format!("/api/v1/namespaces/{n}/workloadentries"));
    let proxies = unloaded();
    let certs = fetched("/api/v1/certificates");
    let vss = fetched("/api/v1/virtualservices");
    let drs = fetched("/api/v1/destinationrules");
    let authz = fetched(format!("/api/v1/namespaces/{n}/authorizationpolicies"));
    let name2 = name.clone();
    every(Duration::from_secs(5), move || {
        fetch_into(proxies, "/api/v1/proxy-status".into());
        fetch_into(
            stats,
            format!("/api/v1/stats/services?service={}&window={}", api::escape(&name2), window.get_untracked()),
        );
    });
    let name3 = name.clone();
    let pick = move |ev| {
        window.set(event_target_value(&ev));
        fetch_into(
            stats,
            format!("/api/v1/stats/services?service={}&window={}", api::escape(&name3), window.get_untracked()),
        );
    };
    let (ns_i, name_i) = (ns.clone(), name.clone());
    let instances = move || {
        let (ns, name) = (ns_i.clone(), name_i.clone());
        loaded(entries, move |e| {
            let agents: Vec<Value> = match proxies.get() {
                Some(Ok(p)) => p["proxies"].as_array().cloned().unwrap_or_default(),
                _ => Vec::new(),
            };
            let certs: Vec<Value> = match certs.get() {
                Some(Ok(c)) => c["items"].as_array().cloned().unwrap_or_default(),
                _ => Vec::new(),
            };
            let mine: Vec<Value> = e["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|w| w["spec"]["labels"]["app"].as_str() == Some(&name))
                .collect();
            if mine.is_empty() {
                return view! { <p class="empty">{format!("No instances of {name} in {ns}: start one with meshgate agent --service {name}, or add a WorkloadEntry labelled app: {name}.")}</p> }.into_any();
            }
            let rows = mine.iter().map(|w| {
                let wname = text(&w["metadata"]["name"]);
                let labels = &w["spec"]["labels"];
                let agent = agents.iter().find(|a| a["name"].as_str() == Some(&wname));
                let (health, class) = match agent.map(|a| &a["healthy"]) {
                    Some(Value::Bool(true)) => ("healthy".to_string(), "badge ok"),
                    Some(Value::Bool(false)) => (format!("unhealthy {}", agent.map(|a| text(&a["healthReason"])).unwrap_or_default()), "badge bad"),
                    _ => ("not probed".to_string(), "badge"),
                };
                let sa = w["spec"]["serviceAccount"].as_str().unwrap_or(&name).to_string();
                let expiry = certs
                    .iter()
                    .filter(|c| c["identity"].as_str().is_some_and(|i| i.ends_with(&format!("/ns/{ns}/sa/{sa}"))))
                    .filter_map(|c| c["notAfter"].as_str().map(str::to_string))
                    .max()
                    .unwrap_or_else(|| "-".into());
                view! {
                    <tr>
                        <td>{wname.clone()}</td>
                        <td>{text(&labels["version"])}</td>
                        <td>{text(&w["spec"]["address"])}</td>
                        <td>{w["spec"]["locality"].as_str().map(str::to_string).or_else(|| labels["region"].as_str().map(str::to_string)).unwrap_or_else(|| "-".into())}</td>
                        <td><span class=class>{health}</span></td>
                        <td>{agent.map_or_else(|| "no agent".to_string(), |a| format!("{} (revision {})", text(&a["status"]), text(&a["revision"])))}</td>
                        <td>{expiry}</td>
                    </tr>
                }
            }).collect_view();
            view! {
                <div class="table-wrap"><table id="instances">
                    <thead><tr><th>"Instance"</th><th>"Version"</th><th>"Address"</th><th>"Locality"</th><th>"Health"</th><th>"Agent"</th><th>"Certificate expires"</th></tr></thead>
                    <tbody>{rows}</tbody>
                </table></div>
            }.into_any()
        })
    };
    let (ns_r, name_r) = (ns.clone(), name.clone());
    let routes = move || {
        let (ns, name) = (ns_r.clone(), name_r.clone());
        let mut out: Vec<(String, String, String)> = Vec::new();
        if let Some(Ok(v)) = vss.get() {
            for vs in v["items"].as_array().cloned().unwrap_or_default() {
                let dests = ["http", "tcp", "tls"].iter().any(|k| {
                    vs["spec"][*k].as_array().is_some_and(|rs| {
                        rs.iter().any(|r| {
                            r["route"].as_array().is_some_and(|ds| {
                                ds.iter().any(|d| {
                                    d["destination"]["host"].as_str().is_some_and(|h| is_service(h, &ns, &name))
                                })
                            })
                        })
                    })
                });
                if dests {
                    let (vns, vname) = (text(&vs["metadata"]["namespace"]), text(&vs["metadata"]["name"]));
                    out.push(("VirtualService".into(), format!("{vns}/{vname}"), format!("/routes/{vns}/{vname}")));
                }
            }
        }
        if let Some(Ok(d)) = drs.get() {
            for dr in d["items"].as_array().cloned().unwrap_or_default() {
                if dr["spec"]["host"].as_str().is_some_and(|h| is_service(h, &ns, &name)) {
                    out.push((
                        "DestinationRule".into(),
                        format!("{}/{}", text(&dr["metadata"]["namespace"]), text(&dr["metadata"]["name"])),
                        String::new(),
                    ));
                }
            }
        }
        if let Some(Ok(a)) = authz.get() {
            for p in a["items"].as_array().cloned().unwrap_or_default() {
                let applies = p["spec"]["selector"]["matchLabels"]["app"].as_str().is_none_or(|app| app == name);
                if applies {
                    out.push((
                        "AuthorizationPolicy".into(),
                        format!("{}/{}", text(&p["metadata"]["namespace"]), text(&p["metadata"]["name"])),
                        String::new(),
                    ));
                }
            }
        }
        if out.is_empty() {
            return view! { <p class="empty">"No routes or policies name this service."</p> }.into_any();
        }
        out.into_iter()
            .map(|(kind, id, href)| {
                let name = if href.is_empty() {
                    view! { <span>{id}</span> }.into_any()
                } else {
                    view! { <a href=href>{id}</a> }.into_any()
                };
                view! { <li>{kind}" "{name}</li> }
            })
            .collect_view()
            .into_any()
    };
    let page = move || {
        view! {
            <section class="panel">
                <h2 style="margin-top:0">"Instances"</h2>
                {instances.clone()}
            </section>
            <section class="panel">
                <div class="row" style="justify-content:space-between">
                    <h2 style="margin:0">"Per version"</h2>
                    <div class="field"><label for="window">"Window"</label>
                        <select id="window" on:change=pick.clone()>
                            <option value="5m">"5 minutes"</option>
                            <option value="15m" selected>"15 minutes"</option>
                            <option value="1h">"1 hour"</option>
                        </select></div>
                </div>
                {loaded(stats, |s| view! { <Versions stats=s/> })}
            </section>
            <section class="panel">
                <h2 style="margin-top:0">"Routes and policies"</h2>
                <ul>{routes.clone()}</ul>
            </section>
        }
    };
    view! {
        <h1>{format!("Service {ns}/{name}")}</h1>
        {when_loaded(vec![stats, entries, proxies, certs, vss, drs, authz], page)}
    }
}

#[component]
fn Versions(stats: Value) -> impl IntoView {
    let list: Vec<Value> = stats["services"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return view! { <p class="empty">"No requests to this service in the window."</p> }.into_any();
    }
    let step = stats["step"].as_i64().unwrap_or(10);
    list.into_iter()
        .map(|s| {
            let points: Vec<Value> = s["points"].as_array().cloned().unwrap_or_default();
            let series = |k: &str, scale: f64| -> Vec<(f64, f64)> {
                points.iter().map(|p| (p["t"].as_f64().unwrap_or(0.0), p[k].as_f64().unwrap_or(0.0) * scale)).collect()
            };
            let last = points.last().cloned().unwrap_or(Value::Null);
            // The slowest point's traces: requests at least that slow, in that step.
            let slow = points
                .iter()
                .filter(|p| p["p99"].as_f64().is_some())
                .max_by(|a, b| a["p99"].as_f64().unwrap_or(0.0).total_cmp(&b["p99"].as_f64().unwrap_or(0.0)));
            let link = slow.map(|p| {
                let t = p["t"].as_i64().unwrap_or(0);
                let ms = p["p99"].as_f64().unwrap_or(0.0).floor().max(1.0) as i64;
                format!("/traces?minDuration={ms}ms&start={}&end={}", t * 1000, (t + step) * 1000)
            });
            view! {
                <div class="version">
                    <h3>{format!("{} {}", text(&s["service"]).split(".svc.").next().unwrap_or(""), text(&s["version"]))}</h3>
                    <div class="row">
                        <div><label>"Requests/s"</label><super::overview::Spark points=series("rps", 1.0)/>
                            <div class="muted">{rate(last["rps"].as_f64().unwrap_or(0.0))}</div></div>
                        <div><label>"Errors (%)"</label><super::overview::Spark points=series("errorRate", 100.0)/>
                            <div class="muted">{format!("{:.1}%", last["errorRate"].as_f64().unwrap_or(0.0) * 100.0)}</div></div>
                        <div><label>"p99 (ms)"</label><super::overview::Spark points=series("p99", 1.0)/>
                            <div class="muted">{format!("{:.1} ms", last["p99"].as_f64().unwrap_or(0.0))}
                                {link.map(|href| view! { " · "<a href=href class="slow-traces">"traces of the slowest point"</a> })}
                            </div></div>
                    </div>
                </div>
            }
        })
        .collect_view()
        .into_any()
}
