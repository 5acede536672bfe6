//! Trace search (service, status, minimum duration, time range) and a
//! trace's waterfall across the gateway and sidecars, with each span's
//! attributes.

use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};
use serde_json::Value;

use crate::{api, fetch_into, fetched, loaded, micros, text, unloaded};

#[component]
pub fn TraceSearch() -> impl IntoView {
    // A chart's slow point links here with ?minDuration=&start=&end= (Unix ms).
    let query = use_query_map();
    let given = |k: &str| query.read_untracked().get(k).unwrap_or_default();
    let service = RwSignal::new(given("service"));
    let status = RwSignal::new(given("status"));
    let min = RwSignal::new(given("minDuration"));
    let lookback = RwSignal::new("1h".to_string());
    let range = RwSignal::new((!given("start").is_empty()).then(|| (given("start"), given("end"))));
    let data = unloaded();
    let search = move || {
        let mut q = match range.get_untracked() {
            Some((start, end)) => {
                format!("/api/v1/traces?limit=50&start={}&end={}", api::escape(&start), api::escape(&end))
            }
            None => format!("/api/v1/traces?limit=50&lookback={}", api::escape(&lookback.get_untracked())),
        };
        for (k, v) in [
            ("service", service.get_untracked()),
            ("status", status.get_untracked()),
            ("minDuration", min.get_untracked()),
        ] {
            if !v.trim().is_empty() {
                q.push_str(&format!("&{k}={}", api::escape(v.trim())));
            }
        }
        fetch_into(data, q);
    };
    search();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        search();
    };
    view! {
        <h1>"Traces"</h1>
        <form class="panel row" on:submit=submit id="trace-search">
            <div class="field"><label for="t-service">"Service"</label>
                <input id="t-service" placeholder="any" prop:value=move || service.get() on:input=move |ev| service.set(event_target_value(&ev))/></div>
            <div class="field"><label for="t-status">"Status"</label>
                <select id="t-status" on:change=move |ev| status.set(event_target_value(&ev))>
                    <option value="" selected=status.get_untracked().is_empty()>"any"</option>
                    <option value="error" selected=status.get_untracked() == "error">"errors"</option>
                    <option value="ok" selected=status.get_untracked() == "ok">"ok"</option>
                </select></div>
            <div class="field"><label for="t-min">"Slower than"</label>
                <input id="t-min" placeholder="e.g. 250ms" prop:value=move || min.get() on:input=move |ev| min.set(event_target_value(&ev))/></div>
            <div class="field"><label for="t-lookback">"In the last"</label>
                <select id="t-lookback" on:change=move |ev| { let v = event_target_value(&ev); if !v.is_empty() { range.set(None); lookback.set(v); } }>
                    {move || range.get().map(|_| view! { <option value="" selected>"the chart's 10 s"</option> })}
                    <option value="1h">"hour"</option><option value="15m">"15 minutes"</option><option value="6h">"6 hours"</option><option value="24h">"day"</option>
                </select></div>
            <button class="primary" type="submit" id="search">"Search"</button>
        </form>
        {loaded(data, |v| {
            let traces: Vec<Value> = v["traces"].as_array().cloned().unwrap_or_default();
            if traces.is_empty() {
                return view! { <p class="empty">"No traces match. Tracing samples 1% of requests by default; raise it with a Telemetry resource, or send a request with a sampled traceparent header."</p> }.into_any();
            }
            let rows = traces.iter().map(|t| {
                let id = text(&t["traceId"]);
                let href = format!("/traces/{id}");
                let err = t["error"].as_bool().unwrap_or(false);
                view! {
                    <tr>
                        <td><a href=href class="trace-link">{format!("{}/{}", text(&t["rootService"]), text(&t["rootOperation"]))}</a></td>
                        <td>{text(&t["startTime"])}</td>
                        <td>{micros(t["durationMicros"].as_u64().unwrap_or(0))}</td>
                        <td>{t["spanCount"].as_u64().unwrap_or(0)}</td>
                        <td>{if err { view! { <span class="badge bad">"error"</span> }.into_any() } else { view! { <span class="badge ok">"ok"</span> }.into_any() }}</td>
                    </tr>
                }
            }).collect_view();
            view! {
                <div class="panel table-wrap">
                    <table id="traces">
                        <thead><tr><th>"Root"</th><th>"Started"</th><th>"Duration"</th><th>"Spans"</th><th>"Status"</th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                </div>
            }.into_any()
        })}
    }
}

#[component]
pub fn TraceView() -> impl IntoView {
    let params = use_params_map();
    let id = params.read_untracked().get("id").unwrap_or_default();
    let data = fetched(format!("/api/v1/traces/{}", api::escape(&id)));
    view! {
        <h1>"Trace "<code>{id.clone()}</code></h1>
        {loaded(data, |t| view! { <Waterfall trace=t/> })}
    }
}

/// Depth of each span under its parents (spans come earliest first).
fn depths(spans: &[Value]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(spans.len());
    for s in spans {
        let parent = s["parentSpanId"].as_str();
        let d = parent
            .and_then(|p| spans.iter().position(|x| x["spanId"].as_str() == Some(p)))
            .and_then(|i| out.get(i).copied())
            .map_or(0, |d| d + 1);
        out.push(d);
    }
    out
}

#[component]
fn Waterfall(trace: Value) -> impl IntoView {
    let spans: Vec<Value> = trace["spans"].as_array().cloned().unwrap_or_default();
    let start = |s: &Value| s["startUnixNano"].as_str().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let t0 = spans.iter().map(start).min().unwrap_or(0);
    let end = spans.iter().map(|s| start(s) + s["durationMicros"].as_u64().unwrap_or(0) * 1000).max().unwrap_or(t0 + 1);
    let total = (end - t0).max(1) as f64;
    let depth = depths(&spans);
    let selected = RwSignal::new(None::<usize>);
    let rows = spans
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let left = (start(s) - t0) as f64 / total * 100.0;
            let width = (s["durationMicros"].as_u64().unwrap_or(0) * 1000) as f64 / total * 100.0;
            let class = if s["error"].as_bool().unwrap_or(false) { "bar err" } else { "bar" };
            let dur_class = if left + width > 85.0 { "dur inside" } else { "dur" };
            let label = format!("{} {}", text(&s["service"]), text(&s["kind"]));
            let name = text(&s["name"]);
            let title = name.clone();
            view! {
                <div class="span" role="button" tabindex="0" data-service=text(&s["service"])
                    on:click=move |_| selected.set(Some(i))
                    on:keydown=move |ev| if ev.key() == "Enter" { selected.set(Some(i)) }>
                    <div class="name" style=format!("padding-left:{}px", depth[i] * 14) title=title>
                        <strong>{label}</strong>" "<span class="muted">{name}</span>
                    </div>
                    <div class="track">
                        <div class=class style=format!("left:{left:.2}%;width:{width:.2}%")></div>
                        <span class=dur_class style=format!("left:{:.2}%", left + width)>
                            {micros(s["durationMicros"].as_u64().unwrap_or(0))}
                        </span>
                    </div>
                </div>
            }
        })
        .collect_view();
    let spans2 = spans.clone();
    view! {
        <p class="muted">{format!("{} spans, {} in all, from {}", spans.len(), micros(trace["durationMicros"].as_u64().unwrap_or(0)), text(&trace["startTime"]))}</p>
        <div class="panel waterfall" id="waterfall">{rows}</div>
        {move || selected.get().map(|i| {
            let s = &spans2[i];
            let attrs = s["attributes"].as_object().cloned().unwrap_or_default();
            let rows = attrs.into_iter().map(|(k, v)| view! { <tr><td><code>{k}</code></td><td>{text(&v)}</td></tr> }).collect_view();
            view! {
                <section class="panel" id="span-detail">
                    <h2 style="margin-top:0">{format!("{} — {}", text(&s["service"]), text(&s["name"]))}</h2>
                    <table><tbody>{rows}</tbody></table>
                </section>
            }
        })}
    }
}
