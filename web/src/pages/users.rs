//! Users and their roles (admins only), and API tokens.

use leptos::prelude::*;
use serde_json::json;

use crate::{api, fetch_into, loaded, text, unloaded, when_loaded};

#[component]
pub fn Users() -> impl IntoView {
    let users = unloaded();
    let tokens = unloaded();
    let reload = move || {
        fetch_into(users, "/api/v1/users".into());
        fetch_into(tokens, "/api/v1/api-tokens".into());
    };
    reload();
    let name = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let role = RwSignal::new("viewer".to_string());
    let error = RwSignal::new(None::<api::Error>);
    let new_token = RwSignal::new(None::<String>);
    let create = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let body =
            json!({"name": name.get_untracked(), "password": password.get_untracked(), "role": role.get_untracked()});
        leptos::task::spawn_local(async move {
            match api::post("/api/v1/users", &body).await {
                Ok(_) => {
                    error.set(None);
                    name.set(String::new());
                    password.set(String::new());
                }
                Err(e) => error.set(Some(e)),
            }
            reload();
        });
    };
    let remove = move |user: String| {
        leptos::task::spawn_local(async move {
            if let Err(e) = api::delete(&format!("/api/v1/users/{}", api::escape(&user))).await {
                error.set(Some(e));
            }
            reload();
        });
    };
    let set_role = move |user: String, role: String| {
        leptos::task::spawn_local(async move {
            if let Err(e) = api::put(&format!("/api/v1/users/{}", api::escape(&user)), &json!({"role": role})).await {
                error.set(Some(e));
            }
            reload();
        });
    };
    let revoke_token = move |id: String| {
        leptos::task::spawn_local(async move {
            if let Err(e) = api::delete(&format!("/api/v1/api-tokens/{}", api::escape(&id))).await {
                error.set(Some(e));
            }
            reload();
        });
    };
    let make_token = move |_| {
        leptos::task::spawn_local(async move {
            match api::post("/api/v1/api-tokens", &json!({"description": "made in the console"})).await {
                Ok(v) => new_token.set(v["token"].as_str().map(str::to_string)),
                Err(e) => error.set(Some(e)),
            }
            reload();
        });
    };
    let field_error = move |path: &'static str| {
        move || error.get().and_then(|e| e.at(path)).map(|r| view! { <div class="field-error">{r}</div> })
    };
    let page = move || {
        view! {
            {loaded(users, move |v| {
                let rows = v["items"].as_array().cloned().unwrap_or_default().into_iter().map(|u| {
                    let n = text(&u["name"]);
                    let n2 = n.clone();
                    let n3 = n.clone();
                    let role = text(&u["role"]);
                    let options = ["viewer", "editor", "admin"].into_iter().map(|r| view! { <option value=r selected=role == r>{r}</option> }).collect_view();
                    view! {
                        <tr><td>{n.clone()}</td>
                        <td><select aria-label=format!("Role of {n}") on:change=move |ev| set_role(n3.clone(), event_target_value(&ev))>{options}</select></td>
                        <td>{text(&u["createdAt"])}</td>
                        <td><button class="danger" on:click=move |_| remove(n2.clone()) aria-label=format!("Delete user {n}")>"Delete"</button></td></tr>
                    }
                }).collect_view();
                view! { <div class="panel table-wrap"><table id="users"><thead><tr><th>"Name"</th><th>"Role"</th><th>"Created"</th><th></th></tr></thead><tbody>{rows}</tbody></table></div> }
            })}
            <form class="panel" on:submit=create id="new-user">
                <h2 style="margin-top:0">"Add a user"</h2>
                <div class="row">
                    <div class="field"><label for="u-name">"Name"</label>
                        <input id="u-name" prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev))/>{field_error("name")}</div>
                    <div class="field"><label for="u-password">"Password"</label>
                        <input id="u-password" type="password" autocomplete="new-password" prop:value=move || password.get() on:input=move |ev| password.set(event_target_value(&ev))/>{field_error("password")}</div>
                    <div class="field"><label for="u-role">"Role"</label>
                        <select id="u-role" on:change=move |ev| role.set(event_target_value(&ev))>
                            <option value="viewer">"viewer"</option><option value="editor">"editor"</option><option value="admin">"admin"</option>
                        </select></div>
                    <button class="primary" type="submit" id="add-user">"Add"</button>
                </div>
                {move || error.get().filter(|e| e.details.is_empty()).map(|e| view! { <p class="error" role="alert">{e.message}</p> })}
            </form>
            <section class="panel">
                <h2 style="margin-top:0">"API tokens"</h2>
                {loaded(tokens, move |v| {
                    let rows = v["items"].as_array().cloned().unwrap_or_default().into_iter().map(|t| {
                        let id = text(&t["id"]);
                        let id2 = id.clone();
                        view! {
                            <tr><td>{id.clone()}</td><td>{text(&t["user"])}</td><td>{text(&t["description"])}</td><td>{text(&t["lastUsedAt"])}</td><td>{text(&t["expiresAt"])}</td>
                            <td><button class="danger" on:click=move |_| revoke_token(id2.clone()) aria-label=format!("Revoke API token {id}")>"Revoke"</button></td></tr>
                        }
                    }).collect_view();
                    view! { <table id="api-tokens"><thead><tr><th>"Id"</th><th>"User"</th><th>"Description"</th><th>"Last used"</th><th>"Expires"</th><th></th></tr></thead><tbody>{rows}</tbody></table> }
                })}
                <button on:click=make_token id="new-token">"New API token for me"</button>
                {move || new_token.get().map(|t| view! { <p>"Copy it now, it is not shown again: "<code id="token-once">{t}</code></p> })}
            </section>
        }
    };
    view! {
        <h1>"Users"</h1>
        {when_loaded(vec![users, tokens], page)}
    }
}
