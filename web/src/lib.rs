//! The meshgate web console: a Leptos app rendered in the browser, served
//! by the meshgate binary on its admin address. It talks to the server only
//! through the public REST API (see [`api`]) and checks YAML with the same
//! `meshgate-model` code as the server.
#![forbid(unsafe_code)]

pub mod api;
mod pages;

use std::time::Duration;

use leptos::prelude::*;
use leptos_router::components::{A, Route, Router, Routes};
use leptos_router::path;
use serde_json::Value;
use wasm_bindgen::prelude::wasm_bindgen;

/// The signed-in user, as `whoami` and login tell.
#[derive(Clone, Debug, PartialEq)]
pub struct Me {
    pub user: String,
    pub role: String,
}

impl Me {
    /// Editors and admins change configuration; viewers only look.
    pub fn can_edit(&self) -> bool {
        self.role == "editor" || self.role == "admin"
    }

    pub fn is_admin(&self) -> bool {
        self.role == "admin"
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Auth {
    Checking,
    Out,
    In(Me),
}

thread_local! {
    static AUTH: std::cell::Cell<Option<RwSignal<Auth>>> = const { std::cell::Cell::new(None) };
}

/// The API said the session is over (401): back to the login form.
pub fn session_ended() {
    if let Some(auth) = AUTH.with(std::cell::Cell::get) {
        api::set_csrf(None);
        auth.try_set(Auth::Out);
    }
}

/// The signed-in user (inside the console's pages).
pub fn me() -> Me {
    match AUTH.with(std::cell::Cell::get).map(|a| a.get_untracked()) {
        Some(Auth::In(me)) => me,
        _ => Me { user: String::new(), role: "viewer".into() },
    }
}

fn signed_in(v: &Value) -> Option<Me> {
    api::set_csrf(v["csrf"].as_str().map(str::to_string));
    Some(Me { user: v["user"].as_str()?.to_string(), role: v["role"].as_str().unwrap_or("viewer").to_string() })
}

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    theme::apply(theme::current());
    leptos::mount::mount_to_body(App);
}

#[component]
fn App() -> impl IntoView {
    let auth = RwSignal::new(Auth::Checking);
    AUTH.with(|a| a.set(Some(auth)));
    leptos::task::spawn_local(async move {
        let state = match api::get("/api/v1/whoami").await.ok().as_ref().and_then(signed_in) {
            Some(me) => Auth::In(me),
            None => Auth::Out,
        };
        auth.set(state);
    });
    view! {
        <Router>
            {move || match auth.get() {
                Auth::Checking => view! { <div class="shell"><nav class="nav"></nav><main></main></div> }.into_any(),
                Auth::Out => view! { <Login auth=auth/> }.into_any(),
                Auth::In(me) => view! { <Shell me=me/> }.into_any(),
            }}
        </Router>
    }
}

#[component]
fn Shell(me: Me) -> impl IntoView {
    let admin = me.is_admin();
    let logout = move |_| {
        leptos::task::spawn_local(async move {
            let _ = api::post("/api/v1/logout", &Value::Null).await;
            session_ended();
        });
    };
    view! {
        <div class="shell">
            <nav class="nav" aria-label="Console">
                <div class="brand"><span aria-hidden="true">"◆"</span>"meshgate"</div>
                <A href="/">"Overview"</A>
                <A href="/services">"Services"</A>
                <A href="/routes">"Routes"</A>
                <A href="/gateways">"Gateways and API"</A>
                <A href="/traces">"Traces"</A>
                <A href="/proxies">"Proxies"</A>
                <A href="/security">"Security"</A>
                <A href="/history">"History"</A>
                {admin.then(|| view! { <A href="/users">"Users"</A> })}
                <div class="who">
                    <span id="whoami">{me.user.clone()}" · "{me.role.clone()}</span>
                    <div class="row">
                        <theme::Toggle/>
                        <button id="logout" on:click=logout>"Log out"</button>
                    </div>
                </div>
            </nav>
            <main>
                <Routes fallback=|| view! { <h1>"Not found"</h1><p class="empty">"No such page. Pick one on the left."</p> }>
                    <Route path=path!("/") view=pages::overview::Overview/>
                    <Route path=path!("/services") view=pages::services::ServiceList/>
                    <Route path=path!("/services/:ns/:name") view=pages::services::ServiceView/>
                    <Route path=path!("/gateways") view=pages::gateways::Gateways/>
                    <Route path=path!("/routes") view=pages::routes::RouteList/>
                    <Route path=path!("/routes/new") view=pages::routes::NewRoute/>
                    <Route path=path!("/routes/:ns/:name") view=pages::routes::RouteEditor/>
                    <Route path=path!("/traces") view=pages::traces::TraceSearch/>
                    <Route path=path!("/traces/:id") view=pages::traces::TraceView/>
                    <Route path=path!("/proxies") view=pages::proxies::Proxies/>
                    <Route path=path!("/security") view=pages::security::Security/>
                    <Route path=path!("/history") view=pages::history::History/>
                    <Route path=path!("/users") view=pages::users::Users/>
                </Routes>
            </main>
        </div>
    }
}

#[component]
fn Login(auth: RwSignal<Auth>) -> impl IntoView {
    let user = RwSignal::new(String::new());
    let password = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let busy = RwSignal::new(false);
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        busy.set(true);
        leptos::task::spawn_local(async move {
            let body = serde_json::json!({"username": user.get_untracked(), "password": password.get_untracked()});
            match api::post("/api/v1/login", &body).await {
                Ok(v) => match signed_in(&v) {
                    Some(me) => auth.set(Auth::In(me)),
                    None => error.set(Some("the server's answer had no user".into())),
                },
                Err(e) => error.set(Some(e.message)),
            }
            busy.set(false);
        });
    };
    view! {
        <main class="login">
            <h1>"meshgate"</h1>
            <form class="panel" on:submit=submit>
                <div class="field">
                    <label for="username">"User name"</label>
                    <input id="username" name="username" autocomplete="username" required
                        prop:value=move || user.get() on:input=move |ev| user.set(event_target_value(&ev))/>
                </div>
                <div class="field">
                    <label for="password">"Password"</label>
                    <input id="password" name="password" type="password" autocomplete="current-password" required
                        prop:value=move || password.get() on:input=move |ev| password.set(event_target_value(&ev))/>
                </div>
                <p class="error" role="alert" id="login-error">{move || error.get()}</p>
                <button class="primary" type="submit" id="login" disabled=move || busy.get()>"Log in"</button>
            </form>
            <p class="muted">"First start: user admin, with the password meshgate up printed (or MESHGATE_ADMIN_PASSWORD)."</p>
        </main>
    }
}

/// Runs `load` now and then every `every` while the page is shown.
pub fn every(every: Duration, load: impl Fn() + Clone + 'static) {
    load();
    if let Ok(handle) = set_interval_with_handle(load, every) {
        on_cleanup(move || handle.clear());
    }
}

/// Loads `url` into `into` (an error stays an error to show).
/// Data a page shows: nothing yet, the API's error, or its answer.
pub type Loaded = RwSignal<Option<api::Result<Value>>>;

/// A page's data, not asked for yet.
pub fn unloaded() -> Loaded {
    RwSignal::new(None)
}

/// A page's data, asked for now from `url`.
pub fn fetched(url: impl Into<String>) -> Loaded {
    let data = unloaded();
    fetch_into(data, url.into());
    data
}

pub fn fetch_into(into: Loaded, url: String) {
    leptos::task::spawn_local(async move {
        let r = api::get(&url).await;
        into.try_set(Some(r));
    });
}

/// A page whose sections load separately, shown once each has its first
/// answer (or error), with one "Loading…" line until then: sections that
/// filled in one by one would push those below them down while the reader
/// looks at them (layout shift). Later refreshes update in place.
pub fn when_loaded<V: IntoView + 'static>(
    data: Vec<Loaded>,
    page: impl Fn() -> V + Send + Sync + 'static,
) -> impl IntoView {
    let ready = Memo::new(move |_| data.iter().all(|d| d.with(Option::is_some)));
    move || {
        if ready.get() { page().into_any() } else { view! { <p class="muted">"Loading…"</p> }.into_any() }
    }
}

/// The shape every page uses for loaded data: nothing yet, an error, or the value.
pub fn loaded<V: IntoView + 'static>(data: Loaded, show: impl Fn(Value) -> V + Send + Sync + 'static) -> impl IntoView {
    move || match data.get() {
        None => view! { <p class="muted">"Loading…"</p> }.into_any(),
        Some(Err(e)) => view! { <p class="error" role="alert">{e.to_string()}</p> }.into_any(),
        Some(Ok(v)) => show(v).into_any(),
    }
}

pub fn rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}/s")
    } else if x >= 1.0 {
        format!("{x:.1}/s")
    } else {
        format!("{x:.2}/s")
    }
}

pub fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// A list answer's `items`.
pub fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

mod theme {
    use leptos::prelude::*;

    pub fn current() -> String {
        let stored = web_sys::window()
            .and_then(|w| w.local_storage().ok().flatten())
            .and_then(|s| s.get_item("meshgate-theme").ok().flatten());
        stored.unwrap_or_else(|| {
            let dark = web_sys::window()
                .and_then(|w| w.match_media("(prefers-color-scheme: dark)").ok().flatten())
                .is_some_and(|m| m.matches());
            if dark { "dark".into() } else { "light".into() }
        })
    }

    pub fn apply(theme: String) {
        if let Some(root) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.document_element()) {
            let _ = root.set_attribute("data-theme", &theme);
        }
    }

    #[component]
    pub fn Toggle() -> impl IntoView {
        let theme = RwSignal::new(current());
        let flip = move |_| {
            let next = if theme.get_untracked() == "dark" { "light" } else { "dark" };
            if let Some(s) = web_sys::window().and_then(|w| w.local_storage().ok().flatten()) {
                let _ = s.set_item("meshgate-theme", next);
            }
            apply(next.into());
            theme.set(next.into());
        };
        view! {
            <button on:click=flip aria-label="Switch between light and dark theme">
                {move || if theme.get() == "dark" { "Light" } else { "Dark" }}
            </button>
        }
    }
}
