//! VirtualServices: the list, an editor (a form with canary sliders, and
//! YAML checked by the same model code as the server), a diff before
//! apply, and which proxies have picked the change up.

use std::time::Duration;

use leptos::prelude::*;
use leptos_router::hooks::{use_navigate, use_params_map};
use serde_json::{Value, json};

use crate::{api, fetch_into, fetched, loaded, me, text, unloaded};

#[component]
pub fn RouteList() -> impl IntoView {
    let data = fetched("/api/v1/virtualservices");
    let can_edit = me().can_edit();
    view! {
        <div class="row" style="justify-content:space-between">
            <h1>"Routes"</h1>
            {can_edit.then(|| view! { <a href="/routes/new"><button class="primary" id="new-route">"New route"</button></a> })}
        </div>
        {loaded(data, |v| {
            let items: Vec<Value> = v["items"].as_array().cloned().unwrap_or_default();
            if items.is_empty() {
                return view! {
                    <p class="empty">"No VirtualServices yet. Create one with New route, or "
                        <code>"meshgate apply -f routes.yaml"</code>"."</p>
                }.into_any();
            }
            let rows = items.into_iter().map(|vs| {
                let ns = text(&vs["metadata"]["namespace"]);
                let name = text(&vs["metadata"]["name"]);
                let href = format!("/routes/{ns}/{name}");
                let list = |v: &Value| v.as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                view! {
                    <tr>
                        <td><a href=href>{name.clone()}</a></td>
                        <td>{ns}</td>
                        <td>{list(&vs["spec"]["hosts"])}</td>
                        <td>{list(&vs["spec"]["gateways"])}</td>
                        <td>{summary(&vs["spec"])}</td>
                    </tr>
                }
            }).collect_view();
            view! {
                <div class="panel table-wrap">
                    <table id="routes">
                        <thead><tr><th>"Name"</th><th>"Namespace"</th><th>"Hosts"</th><th>"Gateways"</th><th>"Destinations"</th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                </div>
            }.into_any()
        })}
    }
}

/// `v1 80% · v2 20%` for the first HTTP route.
fn summary(spec: &Value) -> String {
    let Some(route) = spec["http"][0]["route"].as_array() else { return "-".into() };
    route
        .iter()
        .map(|d| {
            let dest = &d["destination"];
            let name = dest["subset"].as_str().map_or_else(|| text(&dest["host"]), str::to_string);
            match d["weight"].as_i64() {
                Some(w) if route.len() > 1 => format!("{name} {w}%"),
                _ => name,
            }
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("# cannot show as YAML: {e}\n"))
}

/// What the model says of `text`: the problems, or the document.
fn check(text: &str, namespace: &str) -> Result<Value, Vec<meshgate_model::Problem>> {
    meshgate_model::decode("editor", text, namespace)?;
    let docs = meshgate_model::parse::documents("editor", text).map_err(|p| vec![*p])?;
    match <[Value; 1]>::try_from(docs) {
        Ok([doc]) => Ok(doc),
        Err(docs) => Err(vec![meshgate_model::Problem {
            source: "editor".into(),
            document: None,
            line: None,
            column: None,
            path: String::new(),
            reason: format!("expected one document, found {}", docs.len()),
            object: None,
        }]),
    }
}

/// A line diff (longest common subsequence) of two texts.
pub fn diff(old: &str, new: &str) -> Vec<(char, String)> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push((' ', a[i].to_string()));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(('+', b[j].to_string()));
            j += 1;
        } else {
            out.push(('-', a[i].to_string()));
            i += 1;
        }
    }
    out
}

#[component]
pub fn Diff(old: String, new: String) -> impl IntoView {
    let lines = diff(&old, &new);
    let changed = lines.iter().any(|(c, _)| *c != ' ');
    let body = lines
        .into_iter()
        .map(|(c, l)| {
            let class = match c {
                '+' => "add",
                '-' => "del",
                _ => "",
            };
            view! { <span class=class>{format!("{c} {l}\n")}</span> }
        })
        .collect_view();
    view! {
        {(!changed).then(|| view! { <p class="muted">"No changes."</p> })}
        <pre class="diff" id="diff">{body}</pre>
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Tab {
    Form,
    Yaml,
    Review,
}

#[component]
pub fn RouteEditor() -> impl IntoView {
    let params = use_params_map();
    let ns = params.read_untracked().get("ns").unwrap_or_default();
    let name = params.read_untracked().get("name").unwrap_or_default();
    let url = format!("/api/v1/namespaces/{ns}/virtualservices/{name}");
    let loaded_doc = fetched(url.clone());
    view! {
        <h1>{format!("Route {ns}/{name}")}</h1>
        {loaded(loaded_doc, move |doc| view! { <Editor url=url.clone() original=doc/> })}
    }
}

#[component]
fn Editor(url: String, original: Value) -> impl IntoView {
    let can_edit = me().can_edit();
    let namespace = text(&original["metadata"]["namespace"]);
    let doc = RwSignal::new(original.clone());
    let original = RwSignal::new(original);
    let tab = RwSignal::new(Tab::Form);
    let yaml_text = RwSignal::new(yaml(&original.get_untracked()));
    let problems = RwSignal::new(Vec::<meshgate_model::Problem>::new());
    let result = RwSignal::new(None::<Result<i64, api::Error>>);
    let busy = RwSignal::new(false);
    let ns2 = namespace.clone();
    let on_yaml = move |ev| {
        let t = event_target_value(&ev);
        match check(&t, &ns2) {
            Ok(v) => {
                problems.set(Vec::new());
                doc.set(v);
            }
            Err(p) => problems.set(p),
        }
        yaml_text.set(t);
    };
    let show = move |t: Tab| {
        if t == Tab::Yaml {
            yaml_text.set(yaml(&doc.get_untracked()));
            problems.set(Vec::new());
        }
        tab.set(t);
    };
    let url2 = url.clone();
    let apply = move |_| {
        let url = url2.clone();
        busy.set(true);
        leptos::task::spawn_local(async move {
            let r = api::put(&url, &doc.get_untracked()).await;
            match r {
                Ok(stored) => {
                    // The revision that recorded this change, from the object's history.
                    let m = &stored["metadata"];
                    let q = format!(
                        "/api/v1/history?limit=1&kind=VirtualService&namespace={}&name={}",
                        api::escape(m["namespace"].as_str().unwrap_or("")),
                        api::escape(m["name"].as_str().unwrap_or(""))
                    );
                    let rev = api::get(&q).await.ok().and_then(|h| h["revisions"][0]["revision"].as_i64()).unwrap_or(0);
                    // The stored object, with its new resourceVersion.
                    if let Ok(now) = api::get(&url).await {
                        original.set(now.clone());
                        doc.set(now);
                    }
                    result.set(Some(Ok(rev)));
                    tab.set(Tab::Form);
                }
                Err(e) => result.set(Some(Err(e))),
            }
            busy.set(false);
        });
    };
    let tab_button = move |t: Tab, label: &'static str, id: &'static str| {
        view! {
            <button role="tab" id=id aria-selected=move || (tab.get() == t).to_string() on:click=move |_| show(t)>{label}</button>
        }
    };
    view! {
        <div class="tabs" role="tablist">
            {tab_button(Tab::Form, "Form", "tab-form")}
            {tab_button(Tab::Yaml, "YAML", "tab-yaml")}
            {can_edit.then(|| tab_button(Tab::Review, "Review and apply", "tab-review"))}
        </div>
        {move || match tab.get() {
            Tab::Form => view! { <RouteForm doc=doc can_edit=can_edit/> }.into_any(),
            Tab::Yaml => view! {
                <div class="panel">
                    <label for="yaml">"VirtualService as YAML (checked as you type)"</label>
                    <textarea id="yaml" class="yaml" spellcheck="false" readonly=!can_edit
                        prop:value=move || yaml_text.get() on:input=on_yaml.clone()></textarea>
                    <ul id="problems" class="error" role="alert">
                        {move || problems.get().into_iter().map(|p| {
                            let at = match (p.line, p.path.is_empty()) {
                                (Some(l), false) => format!("line {l}, {}: ", p.path),
                                (Some(l), true) => format!("line {l}: "),
                                (None, false) => format!("{}: ", p.path),
                                (None, true) => String::new(),
                            };
                            view! { <li data-path=p.path.clone()>{at}{p.reason}</li> }
                        }).collect_view()}
                    </ul>
                </div>
            }.into_any(),
            Tab::Review => view! {
                <div class="panel">
                    <Diff old=yaml(&original.get_untracked()) new=yaml(&doc.get_untracked())/>
                    <div class="row" style="margin-top:10px">
                        <button class="primary" id="apply" on:click=apply.clone() disabled=move || busy.get() || !problems.get().is_empty()>"Apply"</button>
                        {move || (!problems.get().is_empty()).then(|| view! { <span class="error">"Fix the YAML first."</span> })}
                    </div>
                </div>
            }.into_any(),
        }}
        {move || result.get().map(|r| match r {
            Ok(rev) => view! { <Propagation revision=rev/> }.into_any(),
            Err(e) => view! { <ErrorList error=e/> }.into_any(),
        })}
    }
}

/// An API error with its field details.
#[component]
pub fn ErrorList(error: api::Error) -> impl IntoView {
    let details = error
        .details
        .iter()
        .map(|(p, r)| view! { <li data-path=p.clone()><code>{p.clone()}</code>": "{r.clone()}</li> })
        .collect_view();
    view! {
        <div class="panel error" role="alert" id="api-error">
            <p>{error.message.clone()}</p>
            <ul>{details}</ul>
        </div>
    }
}

/// The form view of a VirtualService's HTTP routes: weights (a slider for
/// a two-way split), timeout and retries.
#[component]
fn RouteForm(doc: RwSignal<Value>, can_edit: bool) -> impl IntoView {
    // A memo: the routes are rebuilt when one is added or removed, not at
    // every edit (which would swap the slider out from under the pointer).
    let routes = Memo::new(move |_| doc.with(|d| d["spec"]["http"].as_array().map_or(0, Vec::len)));
    view! {
        {move || (routes.get() == 0).then(|| view! { <p class="empty">"This VirtualService has no HTTP routes (tcp and tls routes are edited as YAML)."</p> })}
        {move || (0..routes.get()).map(|i| view! { <HttpRoute doc=doc i=i can_edit=can_edit/> }).collect_view()}
    }
}

fn match_summary(route: &Value) -> String {
    let Some(m) = route["match"].as_array() else { return "every request".into() };
    m.iter()
        .map(|m| {
            let uri = &m["uri"];
            let mut parts = Vec::new();
            for k in ["exact", "prefix", "regex"] {
                if let Some(v) = uri[k].as_str() {
                    parts.push(format!("uri {k} {v}"));
                }
            }
            if let Some(h) = m["headers"].as_object() {
                parts.extend(h.keys().map(|k| format!("header {k}")));
            }
            if parts.is_empty() { "any".to_string() } else { parts.join(", ") }
        })
        .collect::<Vec<_>>()
        .join(" or ")
}

#[component]
fn HttpRoute(doc: RwSignal<Value>, i: usize, can_edit: bool) -> impl IntoView {
    let route = move || doc.with(|d| d["spec"]["http"][i].clone());
    let dests = move || route()["route"].as_array().cloned().unwrap_or_default();
    let set = move |f: &dyn Fn(&mut Value)| doc.update(|d| f(&mut d["spec"]["http"][i]));
    let weight = move |j: usize| route()["route"][j]["weight"].as_i64().unwrap_or(if j == 0 { 100 } else { 0 });
    let name = move || route()["name"].as_str().map_or_else(|| format!("route {}", i + 1), str::to_string);
    let dest_name = |d: &Value| {
        let dest = &d["destination"];
        match dest["subset"].as_str() {
            Some(s) => format!("{} ({s})", text(&dest["host"])),
            None => text(&dest["host"]),
        }
    };
    let slider = move || {
        let ds = dests();
        (ds.len() == 2).then(|| {
            let (a, b) = (dest_name(&ds[0]), dest_name(&ds[1]));
            let id = format!("canary-{i}");
            view! {
                <div class="field">
                    <label for=id.clone()>{format!("Canary: share of {b}")}</label>
                    <div class="row">
                        <span>{move || format!("{a} {}%", weight(0))}</span>
                        <input type="range" id=id min="0" max="100" step="1" disabled=!can_edit
                            prop:value=move || weight(1).to_string()
                            on:input=move |ev| {
                                let v: i64 = event_target_value(&ev).parse().unwrap_or(0).clamp(0, 100);
                                set(&|r| {
                                    r["route"][0]["weight"] = json!(100 - v);
                                    r["route"][1]["weight"] = json!(v);
                                });
                            }/>
                        <span>{move || format!("{b} {}%", weight(1))}</span>
                    </div>
                </div>
            }
        })
    };
    let weights = move || {
        let ds = dests();
        (ds.len() != 2 && ds.len() > 1).then(|| {
            ds.iter()
                .enumerate()
                .map(|(j, d)| {
                    let id = format!("weight-{i}-{j}");
                    view! {
                        <div class="field">
                            <label for=id.clone()>{format!("Weight of {}", dest_name(d))}</label>
                            <input type="number" id=id min="0" max="100" disabled=!can_edit
                                prop:value=move || weight(j).to_string()
                                on:input=move |ev| {
                                    let v: i64 = event_target_value(&ev).parse().unwrap_or(0);
                                    set(&|r| r["route"][j]["weight"] = json!(v));
                                }/>
                        </div>
                    }
                })
                .collect_view()
        })
    };
    let single = move || {
        let ds = dests();
        (ds.len() == 1).then(|| view! { <p>"All requests go to "{dest_name(&ds[0])}"."</p> })
    };
    let extra = view! {
        <div class="row">
            {route_field(doc, i, format!("delay-{i}"), "Fault: delay (e.g. 2s)", &["fault", "delay", "fixedDelay"], false, can_edit)}
            {route_field(doc, i, format!("delay-pct-{i}"), "… of % of requests", &["fault", "delay", "percentage", "value"], true, can_edit)}
            {route_field(doc, i, format!("abort-{i}"), "Fault: abort with status", &["fault", "abort", "httpStatus"], true, can_edit)}
            {route_field(doc, i, format!("abort-pct-{i}"), "… for % of requests", &["fault", "abort", "percentage", "value"], true, can_edit)}
        </div>
        <div class="row">
            {route_field(doc, i, format!("mirror-{i}"), "Mirror to service", &["mirror", "host"], false, can_edit)}
            {route_field(doc, i, format!("mirror-subset-{i}"), "Mirror subset", &["mirror", "subset"], false, can_edit)}
            {route_field(doc, i, format!("mirror-pct-{i}"), "Mirror % of requests", &["mirrorPercentage", "value"], true, can_edit)}
            {route_field(doc, i, format!("per-try-{i}"), "Per-try timeout", &["retries", "perTryTimeout"], false, can_edit)}
            {route_field(doc, i, format!("retry-on-{i}"), "Retry on", &["retries", "retryOn"], false, can_edit)}
        </div>
        <div class="row">
            {header_field(doc, i, format!("req-set-{i}"), "Set request headers (name=value, …)", &["headers", "request", "set"], can_edit)}
            {header_field(doc, i, format!("resp-set-{i}"), "Set response headers (name=value, …)", &["headers", "response", "set"], can_edit)}
        </div>
    };
    let match_editor = view! { <MatchList doc=doc i=i can_edit=can_edit/> };
    view! {
        <section class="panel">
            <h2 style="margin-top:0">{name}" "<span class="muted">{move || match_summary(&route())}</span></h2>
            {match_editor}
            {single}
            {slider}
            {weights}
            <div class="row">
                {route_field(doc, i, format!("timeout-{i}"), "Timeout (e.g. 5s; empty: none)", &["timeout"], false, can_edit)}
                {route_field(doc, i, format!("retries-{i}"), "Retry attempts", &["retries", "attempts"], true, can_edit)}
            </div>
            {extra}
        </section>
    }
}

/// Sets (or, with `None`, removes) the field at `path` in `v`, making
/// objects on the way and dropping those a removal leaves empty.
fn set_path(v: &mut Value, path: &[&str], new: Option<Value>) {
    let Some((last, parents)) = path.split_last() else { return };
    if parents.is_empty() {
        if let Some(o) = v.as_object_mut() {
            match new {
                Some(n) => {
                    o.insert((*last).to_string(), n);
                }
                None => {
                    o.remove(*last);
                }
            }
        }
        return;
    }
    let head = parents[0];
    if v.get(head).is_none() {
        if new.is_none() {
            return;
        }
        v[head] = json!({});
    }
    let mut rest: Vec<&str> = parents[1..].to_vec();
    rest.push(last);
    set_path(&mut v[head], &rest, new);
    if v[head].as_object().is_some_and(serde_json::Map::is_empty)
        && let Some(o) = v.as_object_mut()
    {
        o.remove(head);
    }
}

fn get_path(v: &Value, path: &[&str]) -> String {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    match at {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A text or number input bound to one field of HTTP route `i`.
fn route_field(
    doc: RwSignal<Value>,
    i: usize,
    id: String,
    label: &'static str,
    path: &'static [&'static str],
    number: bool,
    can_edit: bool,
) -> impl IntoView {
    view! {
        <div class="field">
            <label for=id.clone()>{label}</label>
            <input id=id type=if number { "number" } else { "text" } disabled=!can_edit
                prop:value=move || doc.with(|d| get_path(&d["spec"]["http"][i], path))
                on:change=move |ev| {
                    let raw = event_target_value(&ev);
                    let raw = raw.trim();
                    let new = if raw.is_empty() {
                        None
                    } else if number {
                        raw.parse::<f64>().ok().map(|n| if n.fract() == 0.0 { json!(n as i64) } else { json!(n) })
                    } else {
                        Some(json!(raw))
                    };
                    doc.update(|d| set_path(&mut d["spec"]["http"][i], path, new));
                }/>
        </div>
    }
}

/// `name=value, …` bound to a map of headers (e.g. `headers.request.set`) of HTTP route `i`.
fn header_field(
    doc: RwSignal<Value>,
    i: usize,
    id: String,
    label: &'static str,
    path: &'static [&'static str],
    can_edit: bool,
) -> impl IntoView {
    let shown = move || {
        doc.with(|d| {
            let mut at = &d["spec"]["http"][i];
            for p in path {
                at = &at[*p];
            }
            at.as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        })
    };
    view! {
        <div class="field">
            <label for=id.clone()>{label}</label>
            <input id=id disabled=!can_edit prop:value=shown
                on:change=move |ev| {
                    let raw = event_target_value(&ev);
                    let map: serde_json::Map<String, Value> = raw
                        .split(',')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.trim().to_string(), json!(v.trim())))
                        .filter(|(k, _)| !k.is_empty())
                        .collect();
                    let new = (!map.is_empty()).then_some(Value::Object(map));
                    doc.update(|d| set_path(&mut d["spec"]["http"][i], path, new));
                }/>
        </div>
    }
}

/// The matches of HTTP route `i`, any one of which selects it.
#[component]
fn MatchList(doc: RwSignal<Value>, i: usize, can_edit: bool) -> impl IntoView {
    // A memo, so that the rows are rebuilt only when a match is added or
    // removed, not at every keystroke in one of them.
    let count = Memo::new(move |_| doc.with(|d| d["spec"]["http"][i]["match"].as_array().map_or(0, Vec::len)));
    let add = move |_| {
        doc.update(|d| {
            let route = &mut d["spec"]["http"][i];
            match route["match"].as_array_mut() {
                Some(list) => list.push(json!({"uri": {"prefix": "/"}})),
                None => route["match"] = json!([{"uri": {"prefix": "/"}}]),
            }
        })
    };
    view! {
        <fieldset class="matches">
            <legend>"Requests this route takes"</legend>
            {move || (count.get() == 0).then(|| view! { <p class="muted">"Every request: this route has no match."</p> })}
            {move || (0..count.get()).map(|k| view! { <MatchRow doc=doc i=i k=k can_edit=can_edit/> }).collect_view()}
            {can_edit.then(|| view! { <button type="button" id=format!("add-match-{i}") on:click=add>"Add a match (or)"</button> })}
        </fieldset>
    }
}

/// Runs `f` on match `k` of HTTP route `i`, if it is there.
fn update_match(doc: RwSignal<Value>, i: usize, k: usize, f: impl FnOnce(&mut Value)) {
    doc.update(|d| {
        if let Some(m) = d.pointer_mut(&format!("/spec/http/{i}/match/{k}")) {
            f(m);
        }
    });
}

/// An Istio StringMatch as (kind, value); `{}` is "present".
fn string_match(v: &Value) -> (&'static str, String) {
    for k in ["exact", "prefix", "regex"] {
        if let Some(s) = v[k].as_str() {
            return (k, s.to_string());
        }
    }
    ("present", String::new())
}

fn make_string_match(kind: &str, value: &str) -> Value {
    if kind == "present" { json!({}) } else { json!({ kind: value }) }
}

const MATCH_KINDS: [&str; 4] = ["exact", "prefix", "regex", "present"];

/// Match `k` of HTTP route `i`: path (prefix, exact or regex), method, and
/// conditions on headers and query parameters.
#[component]
fn MatchRow(doc: RwSignal<Value>, i: usize, k: usize, can_edit: bool) -> impl IntoView {
    let this = move || doc.with(|d| d["spec"]["http"][i]["match"][k].clone());
    let kind = move || {
        let m = this();
        ["prefix", "exact", "regex"].into_iter().find(|x| m["uri"][*x].is_string()).unwrap_or("prefix")
    };
    let value = move || this()["uri"][kind()].as_str().unwrap_or("").to_string();
    let set_uri = move |uri_kind: String, uri: String| {
        update_match(doc, i, k, |m| set_path(m, &["uri"], (!uri.is_empty()).then(|| json!({ uri_kind: uri }))));
    };
    let remove = move |_| {
        doc.update(|d| {
            let route = &mut d["spec"]["http"][i];
            if let Some(list) = route["match"].as_array_mut()
                && k < list.len()
            {
                list.remove(k);
            }
            if route["match"].as_array().is_some_and(Vec::is_empty) {
                set_path(route, &["match"], None);
            }
        })
    };
    let (kind_id, path_id, method_id) =
        (format!("match-kind-{i}-{k}"), format!("match-path-{i}-{k}"), format!("match-method-{i}-{k}"));
    view! {
        <div class="match" id=format!("match-{i}-{k}")>
            <div class="row">
                <strong>{if k == 0 { "Match".to_string() } else { format!("or match {}", k + 1) }}</strong>
                {can_edit.then(|| view! {
                    <button type="button" class="danger" id=format!("remove-match-{i}-{k}") on:click=remove>"Remove this match"</button>
                })}
            </div>
            <div class="row">
                <div class="field">
                    <label for=kind_id.clone()>"Path by"</label>
                    <select id=kind_id disabled=!can_edit on:change=move |ev| set_uri(event_target_value(&ev), value())>
                        {["prefix", "exact", "regex"].into_iter().map(|x| view! { <option value=x selected=move || kind() == x>{x}</option> }).collect_view()}
                    </select>
                </div>
                <div class="field">
                    <label for=path_id.clone()>"Path (empty: any)"</label>
                    <input id=path_id disabled=!can_edit prop:value=value
                        on:change=move |ev| set_uri(kind().to_string(), event_target_value(&ev).trim().to_string())/>
                </div>
                <div class="field">
                    <label for=method_id.clone()>"Method (empty: any)"</label>
                    <input id=method_id disabled=!can_edit
                        prop:value=move || this()["method"]["exact"].as_str().unwrap_or("").to_string()
                        on:change=move |ev| {
                            let method = event_target_value(&ev).trim().to_uppercase();
                            update_match(doc, i, k, |m| set_path(m, &["method"], (!method.is_empty()).then(|| json!({"exact": method}))));
                        }/>
                </div>
            </div>
            {CONDITIONS.into_iter().map(|(field, what)| view! { <Conditions doc=doc i=i k=k field=field what=what can_edit=can_edit/> }).collect_view()}
            {can_edit.then(|| view! { <AddCondition doc=doc i=i k=k/> })}
        </div>
    }
}

/// Sets (or, with `None`, removes) the condition on `name` under `field` of
/// match `k` of HTTP route `i`.
fn set_condition(doc: RwSignal<Value>, i: usize, k: usize, field: &str, name: String, cond: Option<Value>) {
    update_match(doc, i, k, |m| {
        let mut map = m[field].as_object().cloned().unwrap_or_default();
        match cond {
            Some(c) => {
                map.insert(name, c);
            }
            None => {
                map.remove(&name);
            }
        }
        set_path(m, &[field], (!map.is_empty()).then_some(Value::Object(map)));
    })
}

/// What a match can test besides the path and method, as (field, what the form calls it).
const CONDITIONS: [(&str, &str); 3] =
    [("headers", "Header"), ("queryParams", "Query parameter"), ("withoutHeaders", "Unless header")];

/// A row that adds a condition (header, query parameter, or header that
/// must not match) to match `k` of HTTP route `i`.
#[component]
fn AddCondition(doc: RwSignal<Value>, i: usize, k: usize) -> impl IntoView {
    let field = RwSignal::new("headers".to_string());
    let (name, kind, value) =
        (RwSignal::new(String::new()), RwSignal::new("exact".to_string()), RwSignal::new(String::new()));
    let add = move |_| {
        let n = name.get_untracked().trim().to_string();
        if n.is_empty() {
            return;
        }
        let f = field.get_untracked();
        set_condition(doc, i, k, &f, n, Some(make_string_match(&kind.get_untracked(), value.get_untracked().trim())));
        name.set(String::new());
        value.set(String::new());
    };
    let id = move |part: &str| format!("cond-{part}-{i}-{k}");
    view! {
        <div class="row cond add">
            <select id=id("field") aria-label="New condition: on what" on:change=move |ev| field.set(event_target_value(&ev))>
                {CONDITIONS.into_iter().map(|(f, what)| view! { <option value=f selected=move || field.get() == f>{what}</option> }).collect_view()}
            </select>
            <input id=id("name") placeholder="name" aria-label="New condition: name"
                prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev))/>
            <select id=id("kind") aria-label="New condition: how it matches" on:change=move |ev| kind.set(event_target_value(&ev))>
                {MATCH_KINDS.into_iter().map(|x| view! { <option value=x selected=move || kind.get() == x>{x}</option> }).collect_view()}
            </select>
            <input id=id("value") placeholder="value" aria-label="New condition: value" disabled=move || kind.get() == "present"
                prop:value=move || value.get() on:input=move |ev| value.set(event_target_value(&ev))/>
            <button type="button" id=id("add") on:click=add>"Add condition"</button>
        </div>
    }
}

/// The conditions under `field` (`headers`, `queryParams`, `withoutHeaders`)
/// of match `k` of HTTP route `i`: a row for each name.
#[component]
fn Conditions(
    doc: RwSignal<Value>,
    i: usize,
    k: usize,
    field: &'static str,
    what: &'static str,
    can_edit: bool,
) -> impl IntoView {
    let names = Memo::new(move |_| {
        doc.with(|d| d["spec"]["http"][i]["match"][k][field].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()))
            .unwrap_or_default()
    });
    let set = move |name: String, cond: Option<Value>| set_condition(doc, i, k, field, name, cond);
    let rows = move || {
        names
            .get()
            .into_iter()
            .enumerate()
            .map(|(n, name)| {
                let cond = {
                    let name = name.clone();
                    move || doc.with(|d| string_match(&d["spec"]["http"][i]["match"][k][field][&name]))
                };
                let (kind_id, value_id, remove_id) =
                    (format!("{field}-kind-{i}-{k}-{n}"), format!("{field}-value-{i}-{k}-{n}"), format!("{field}-remove-{i}-{k}-{n}"));
                let (n1, n2, n3) = (name.clone(), name.clone(), name.clone());
                let (c1, c2, c3, c4) = (cond.clone(), cond.clone(), cond.clone(), cond.clone());
                view! {
                    <div class="row cond">
                        <span class="cond-what">{what}" "<code>{name.clone()}</code></span>
                        <select id=kind_id aria-label=format!("{what} {name}: how it matches") disabled=!can_edit
                            on:change=move |ev| set(n1.clone(), Some(make_string_match(&event_target_value(&ev), &c1().1)))>
                            {MATCH_KINDS.into_iter().map(|x| { let c = c2.clone(); view! { <option value=x selected=move || c().0 == x>{x}</option> } }).collect_view()}
                        </select>
                        <input id=value_id aria-label=format!("{what} {name}: value") disabled=move || !can_edit || c4().0 == "present"
                            prop:value=move || c3().1
                            on:change=move |ev| set(n2.clone(), Some(make_string_match(cond().0, event_target_value(&ev).trim())))/>
                        {can_edit.then(|| view! {
                            <button type="button" id=remove_id aria-label=format!("Remove {what} {n3}") on:click=move |_| set(n3.clone(), None)>"Remove"</button>
                        })}
                    </div>
                }
            })
            .collect_view()
    };
    view! { {rows} }
}

/// Which proxies run the new revision, until all do.
#[component]
fn Propagation(revision: i64) -> impl IntoView {
    let status = unloaded();
    crate::every(Duration::from_secs(1), move || fetch_into(status, "/api/v1/proxy-status".into()));
    view! {
        <section class="panel" id="propagation" aria-live="polite">
            <h2 style="margin-top:0">{format!("Applied as revision {revision}")}</h2>
            {loaded(status, move |v| {
                let proxies: Vec<Value> = v["proxies"].as_array().cloned().unwrap_or_default();
                let rows = proxies.iter().map(|p| {
                    let rev = p["revision"].as_i64().unwrap_or(0);
                    let (class, word) = if rev >= revision { ("badge ok", "picked up") } else { ("badge warn", "pending") };
                    view! { <tr><td>{text(&p["name"])}</td><td>{text(&p["role"])}</td><td>{rev}</td><td><span class=class>{word}</span></td></tr> }
                }).collect_view();
                view! {
                    <table>
                        <thead><tr><th>"Proxy"</th><th>"Role"</th><th>"Revision"</th><th>"This change"</th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                }
            })}
        </section>
    }
}

#[component]
pub fn NewRoute() -> impl IntoView {
    let name = RwSignal::new(String::new());
    let namespace = RwSignal::new("default".to_string());
    let hosts = RwSignal::new(String::new());
    let gateways = RwSignal::new(String::new());
    let prefix = RwSignal::new("/".to_string());
    let dest_host = RwSignal::new(String::new());
    let subset = RwSignal::new(String::new());
    let timeout = RwSignal::new(String::new());
    let problems = RwSignal::new(Vec::<(String, String)>::new());
    let error = RwSignal::new(None::<api::Error>);
    let navigate = use_navigate();
    let list = |s: &str| s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(|x| json!(x)).collect::<Vec<_>>();
    let build = move || {
        let mut dest = json!({"host": dest_host.get_untracked().trim()});
        if !subset.get_untracked().trim().is_empty() {
            dest["subset"] = json!(subset.get_untracked().trim());
        }
        let mut route =
            json!({"match": [{"uri": {"prefix": prefix.get_untracked().trim()}}], "route": [{"destination": dest}]});
        if !timeout.get_untracked().trim().is_empty() {
            route["timeout"] = json!(timeout.get_untracked().trim());
        }
        let mut spec = json!({"hosts": list(&hosts.get_untracked()), "http": [route]});
        let gw = list(&gateways.get_untracked());
        if !gw.is_empty() {
            spec["gateways"] = json!(gw);
        }
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name.get_untracked().trim(), "namespace": namespace.get_untracked().trim()},
            "spec": spec,
        })
    };
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let doc = build();
        let ns = namespace.get_untracked().trim().to_string();
        // The server's checks, here first: errors appear at their fields.
        if let Err(p) = meshgate_model::decode("form", &doc.to_string(), &ns) {
            problems.set(p.into_iter().map(|p| (p.path, p.reason)).collect());
            return;
        }
        problems.set(Vec::new());
        let navigate = navigate.clone();
        leptos::task::spawn_local(async move {
            match api::post(&format!("/api/v1/namespaces/{}/virtualservices", api::escape(&ns)), &doc).await {
                Ok(_) => navigate(
                    &format!("/routes/{ns}/{}", doc["metadata"]["name"].as_str().unwrap_or("")),
                    Default::default(),
                ),
                Err(e) => {
                    problems.set(e.details.clone());
                    error.set(Some(e));
                }
            }
        });
    };
    let at = move |path: &'static str| {
        move || {
            problems.get().into_iter().find(|(p, _)| p == path || p.starts_with(&format!("{path}["))).map(|(_, r)| {
                view! { <div class="field-error" data-path=path>{r}</div> }
            })
        }
    };
    let input = move |id: &'static str, label: &'static str, sig: RwSignal<String>, path: &'static str| {
        view! {
            <div class="field">
                <label for=id>{label}</label>
                <input id=id prop:value=move || sig.get() on:input=move |ev| sig.set(event_target_value(&ev))/>
                {at(path)}
            </div>
        }
    };
    let others = move || {
        let shown = ["metadata.name", "metadata.namespace", "spec.hosts", "spec.gateways", "spec.http[0].timeout"];
        problems
            .get()
            .into_iter()
            .filter(|(p, _)| !shown.iter().any(|s| p == s || p.starts_with(&format!("{s}["))))
            .map(|(p, r)| {
                let path = p.clone();
                view! { <li data-path=path><code>{p}</code>": "{r}</li> }
            })
            .collect_view()
    };
    view! {
        <h1>"New route"</h1>
        <form class="panel" on:submit=submit id="new-route-form">
            {input("vs-name", "Name", name, "metadata.name")}
            {input("vs-namespace", "Namespace", namespace, "metadata.namespace")}
            {input("vs-hosts", "Hosts (comma-separated, e.g. api.example.com)", hosts, "spec.hosts")}
            {input("vs-gateways", "Gateways (comma-separated; empty: the mesh)", gateways, "spec.gateways")}
            {input("vs-prefix", "Path prefix", prefix, "spec.http[0].match")}
            {input("vs-dest", "Destination service", dest_host, "spec.http[0].route")}
            {input("vs-subset", "Subset (optional)", subset, "spec.http[0].route[0].destination.subset")}
            {input("vs-timeout", "Timeout (optional, e.g. 5s)", timeout, "spec.http[0].timeout")}
            <ul class="error" role="alert">{others}</ul>
            {move || error.get().map(|e| view! { <p class="error">{e.message}</p> })}
            <button class="primary" type="submit" id="create-route">"Create"</button>
        </form>
    }
}
