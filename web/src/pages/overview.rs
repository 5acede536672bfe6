//! The service map (who calls whom, with requests/s, errors and p99) and
//! each service version's request rate over the last 15 minutes.

use std::time::Duration;

use leptos::prelude::*;
use serde_json::Value;

use crate::{every, fetch_into, loaded, rate, unloaded, when_loaded};

#[component]
pub fn Overview() -> impl IntoView {
    let graph = unloaded();
    let series = unloaded();
    every(Duration::from_secs(5), move || {
        fetch_into(graph, "/api/v1/graph?window=5m".into());
        fetch_into(series, "/api/v1/stats/services?window=15m".into());
    });
    let page = move || {
        view! {
            <section class="panel" aria-labelledby="map-title">
                <h2 id="map-title" style="margin-top:0">"Service map "<span class="muted">"(last 5 minutes)"</span></h2>
                {loaded(graph, |g| view! { <ServiceMap graph=g/> })}
            </section>
            <section class="panel" aria-labelledby="rates-title">
                <h2 id="rates-title" style="margin-top:0">"Requests per service version "<span class="muted">"(last 15 minutes)"</span></h2>
                {loaded(series, |s| view! { <Rates series=s/> })}
            </section>
        }
    };
    view! {
        <h1>"Overview"</h1>
        {when_loaded(vec![graph, series], page)}
    }
}

/// A service host (`name.namespace.svc.<domain>`) as a link to its page.
fn service_link(host: &str) -> impl IntoView + use<> {
    let mut parts = host.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(ns), Some("svc")) => {
            view! { <a href=format!("/services/{ns}/{name}")>{host.to_string()}</a> }.into_any()
        }
        _ => view! { <span>{host.to_string()}</span> }.into_any(),
    }
}

fn ms(x: f64) -> String {
    if x < 10.0 { format!("{x:.1} ms") } else { format!("{x:.0} ms") }
}

fn short(id: &str) -> String {
    // `namespace/workload` or a service host: the part that tells them apart.
    let id = id.rsplit('/').next().unwrap_or(id);
    id.split('.').next().unwrap_or(id).to_string()
}

#[component]
fn ServiceMap(graph: Value) -> impl IntoView {
    let nodes: Vec<(String, String)> = graph["nodes"]
        .as_array()
        .map(|n| n.iter().map(|x| (crate::text(&x["id"]), crate::text(&x["kind"]))).collect())
        .unwrap_or_default();
    let edges: Vec<Value> = graph["edges"].as_array().cloned().unwrap_or_default();
    if nodes.is_empty() {
        return view! {
            <p class="empty">"No traffic in the last 5 minutes. Send requests through the gateway (port 8080) or between sidecars, and calls appear here within seconds."</p>
        }
        .into_any();
    }
    // Callers (gateway, workloads) on the left, services on the right.
    // Each column gets 36 px a node: 200 services make a tall map to scroll, not a heap.
    let column = nodes
        .iter()
        .filter(|(_, k)| k == "service")
        .count()
        .max(nodes.len() - nodes.iter().filter(|(_, k)| k == "service").count());
    let (w, h) = (860.0, (column.max(2) as f64 * 36.0 + 36.0).max(220.0));
    let left: Vec<&(String, String)> = nodes.iter().filter(|(_, k)| k != "service").collect();
    let right: Vec<&(String, String)> = nodes.iter().filter(|(_, k)| k == "service").collect();
    let place = |list: &[&(String, String)], x: f64| -> Vec<(String, String, f64, f64)> {
        let step = h / (list.len() as f64 + 1.0);
        list.iter().enumerate().map(|(i, (id, k))| (id.clone(), k.clone(), x, step * (i as f64 + 1.0))).collect()
    };
    let mut placed = place(&left, 150.0);
    placed.extend(place(&right, w - 170.0));
    let at = |id: &str| placed.iter().find(|(n, ..)| n == id).map(|(_, _, x, y)| (*x, *y));
    let links = edges
        .iter()
        .filter_map(|e| {
            let (x1, y1) = at(e["source"].as_str()?)?;
            let (x2, y2) = at(e["destination"].as_str()?)?;
            let err = e["errorRate"].as_f64().unwrap_or(0.0);
            let label = format!(
                "{} · {:.1}% err · p99 {}",
                rate(e["rps"].as_f64().unwrap_or(0.0)),
                err * 100.0,
                ms(e["p99"].as_f64().unwrap_or(0.0))
            );
            let class = if err > 0.01 { "link bad" } else { "link" };
            Some(view! {
                <g class=class>
                    <line x1=x1 y1=y1 x2=x2 y2=y2/>
                    <text x=(x1 + x2) / 2.0 y=(y1 + y2) / 2.0 - 6.0>{label}</text>
                </g>
            })
        })
        .collect_view();
    let circles = placed
        .iter()
        .map(|(id, kind, x, y)| {
            let class = if kind == "gateway" { "node edge" } else { "node" };
            let title = format!("{id} ({kind})");
            view! {
                <g class=class>
                    <title>{title}</title>
                    <circle cx=*x cy=*y r=9/>
                    <text x=*x y=*y + 24.0>{short(id)}</text>
                </g>
            }
        })
        .collect_view();
    let rows = edges
        .iter()
        .map(|e| {
            view! {
                <tr>
                    <td>{crate::text(&e["source"])}</td>
                    <td>{service_link(&crate::text(&e["destination"]))}</td>
                    <td>{rate(e["rps"].as_f64().unwrap_or(0.0))}</td>
                    <td>{format!("{:.1}%", e["errorRate"].as_f64().unwrap_or(0.0) * 100.0)}</td>
                    <td>{ms(e["p99"].as_f64().unwrap_or(0.0))}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <svg class="map" viewBox=format!("0 0 {w} {h}") role="img" aria-label="Service map">
            {links}
            {circles}
        </svg>
        <div class="table-wrap">
            <table id="calls">
                <thead><tr><th>"Caller"</th><th>"Service"</th><th>"Requests"</th><th>"Errors"</th><th>"p99"</th></tr></thead>
                <tbody>{rows}</tbody>
            </table>
        </div>
    }
    .into_any()
}

#[component]
fn Rates(series: Value) -> impl IntoView {
    let list: Vec<Value> = series["services"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return view! { <p class="empty">"No requests recorded yet."</p> }.into_any();
    }
    list.into_iter()
        .map(|s| {
            let points: Vec<(f64, f64)> = s["points"]
                .as_array()
                .map(|p| p.iter().map(|x| (x["t"].as_f64().unwrap_or(0.0), x["rps"].as_f64().unwrap_or(0.0))).collect())
                .unwrap_or_default();
            let host = crate::text(&s["service"]);
            let name = format!("{} {}", host.split(".svc.").next().unwrap_or(&host), crate::text(&s["version"]));
            let now = points.last().map_or(0.0, |p| p.1);
            view! {
                <div class="row" style="justify-content:space-between">
                    <span>{name}</span>
                    <Spark points=points/>
                    <span class="muted">{rate(now)}</span>
                </div>
            }
        })
        .collect_view()
        .into_any()
}

/// A small line chart of (t, value) points, with its baseline and the
/// newest point marked; a single point draws as a level line.
#[component]
pub fn Spark(points: Vec<(f64, f64)>) -> impl IntoView {
    let (w, h) = (320.0, 44.0);
    let mut points = points;
    if points.len() == 1 {
        let (t, v) = points[0];
        points.insert(0, (t - 10.0, v));
    }
    let (t0, t1) = (points.first().map_or(0.0, |p| p.0), points.last().map_or(1.0, |p| p.0));
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max).max(1e-9);
    let span = (t1 - t0).max(1.0);
    let xy = |(t, v): (f64, f64)| ((t - t0) / span * (w - 6.0) + 3.0, h - 3.0 - v / max * (h - 8.0));
    let line: String = points
        .iter()
        .map(|p| {
            let (x, y) = xy(*p);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let last = points.last().map(|p| xy(*p));
    view! {
        <svg width=w height=h viewBox=format!("0 0 {w} {h}") aria-hidden="true" class="spark">
            <line x1="0" y1=h - 3.0 x2=w y2=h - 3.0 stroke="var(--line)" stroke-width="1"/>
            <polyline points=line fill="none" stroke="var(--accent)" stroke-width="2"/>
            {last.map(|(x, y)| view! { <circle cx=x cy=y r="3" fill="var(--accent)"/> })}
        </svg>
    }
}
