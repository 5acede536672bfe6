//! The audit log: who changed what and when, a diff per revision, rollback.

use leptos::prelude::*;
use serde_json::Value;

use crate::{api, fetch_into, loaded, me, text, unloaded};

#[component]
pub fn History() -> impl IntoView {
    let data = unloaded();
    let reload = move || fetch_into(data, "/api/v1/history?limit=200&objects=true".into());
    reload();
    let open = RwSignal::new(None::<i64>);
    let outcome = RwSignal::new(None::<Result<String, api::Error>>);
    let can_edit = me().can_edit();
    let rollback = move |rev: i64| {
        leptos::task::spawn_local(async move {
            match api::post(&format!("/api/v1/revisions/{rev}/rollback"), &Value::Null).await {
                Ok(v) => outcome
                    .set(Some(Ok(format!("Rolled back to revision {rev}; now at revision {}.", text(&v["revision"]))))),
                Err(e) => outcome.set(Some(Err(e))),
            }
            reload();
        });
    };
    view! {
        <h1>"History"</h1>
        {move || outcome.get().map(|o| match o {
            Ok(m) => view! { <p class="panel ok" role="status" id="rollback-done">{m}</p> }.into_any(),
            Err(e) => view! { <p class="panel error" role="alert">{e.to_string()}</p> }.into_any(),
        })}
        {loaded(data, move |v| {
            let revs: Vec<Value> = v["revisions"].as_array().cloned().unwrap_or_default();
            if revs.is_empty() {
                return view! { <p class="empty">"No changes yet. Every apply, edit and delete appears here, with who made it."</p> }.into_any();
            }
            let rows = revs.into_iter().map(|r| {
                let rev = r["revision"].as_i64().unwrap_or(0);
                let yaml = |v: &Value| if v.is_null() { String::new() } else { serde_saphyr::to_string(v).unwrap_or_default() };
                let (before, after) = (yaml(&r["before"]), yaml(&r["after"]));
                view! {
                    <tr class="clickable" data-revision=rev on:click=move |_| open.set(if open.get_untracked() == Some(rev) { None } else { Some(rev) })>
                        <td>{rev}</td>
                        <td>{text(&r["at"])}</td>
                        <td>{text(&r["actor"])}</td>
                        <td>{text(&r["op"])}</td>
                        <td>{format!("{} {}/{}", text(&r["kind"]), text(&r["namespace"]), text(&r["name"]))}</td>
                        <td>{can_edit.then(|| view! {
                            <button class="rollback" on:click=move |ev| { ev.stop_propagation(); rollback(rev); }
                                aria-label=format!("Roll back to the state right after revision {rev}")>"Roll back to here"</button>
                        })}</td>
                    </tr>
                    {move || (open.get() == Some(rev)).then(|| view! {
                        <tr><td colspan="6"><super::routes::Diff old=before.clone() new=after.clone()/></td></tr>
                    })}
                }
            }).collect_view();
            view! {
                <div class="panel table-wrap">
                    <table id="history">
                        <thead><tr><th>"Revision"</th><th>"When"</th><th>"Who"</th><th>"What"</th><th>"Object"</th><th></th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                </div>
            }.into_any()
        })}
    }
}
