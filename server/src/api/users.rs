//! Users (admins only), one's own password, and API tokens (one's own;
//! admins: anyone's). A token acts with its user's role, whatever it is now.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Actor, Caller};
use super::error::Detail;
use super::{ApiError, ApiResult, AppState};
use crate::store::{Role, new_token};

const MIN_PASSWORD: usize = 8;

fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        return Ok(());
    }
    Err(ApiError::invalid(
        format!("user name {name:?} is not valid"),
        vec![Detail {
            path: "name".into(),
            reason: "1 to 63 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit".into(),
        }],
    ))
}

fn check_password(field: &str, password: &str) -> Result<(), ApiError> {
    if password.chars().count() >= MIN_PASSWORD {
        return Ok(());
    }
    Err(ApiError::invalid(
        "password too short",
        vec![Detail { path: field.into(), reason: format!("at least {MIN_PASSWORD} characters") }],
    ))
}

fn parse_role(role: &str) -> Result<Role, ApiError> {
    Role::parse(role).ok_or_else(|| {
        ApiError::invalid(
            format!("role {role:?} is not valid"),
            vec![Detail { path: "role".into(), reason: "one of admin, editor, viewer".into() }],
        )
    })
}

pub async fn list(State(state): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"items": state.store.users().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    password: String,
    role: String,
}

pub async fn create(State(state): State<AppState>, Json(u): Json<NewUser>) -> ApiResult<Response> {
    check_name(&u.name)?;
    check_password("password", &u.password)?;
    let role = parse_role(&u.role)?;
    if !state.store.add_user(&u.name, &u.password, role).await? {
        return Err(ApiError::new(StatusCode::CONFLICT, "already_exists", format!("user {} already exists", u.name)));
    }
    tracing::info!(user = %u.name, role = role.as_str(), "user created");
    Ok((StatusCode::CREATED, Json(json!({"name": u.name, "role": role}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    password: Option<String>,
    role: Option<String>,
}

/// The admins other than `name`.
async fn other_admins(state: &AppState, name: &str) -> ApiResult<usize> {
    Ok(state.store.users().await?.iter().filter(|u| u.role == Role::Admin && u.name != name).count())
}

pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(c): Json<UserChange>,
) -> ApiResult<Json<serde_json::Value>> {
    if let Some(p) = &c.password {
        check_password("password", p)?;
    }
    let role = c.role.as_deref().map(parse_role).transpose()?;
    if role.is_some_and(|r| r != Role::Admin) && other_admins(&state, &name).await? == 0 {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "last_admin",
            format!("{name} is the last admin: make another user admin first"),
        ));
    }
    if !state.store.update_user(&name, c.password.as_deref(), role).await? {
        return Err(ApiError::not_found(format!("user {name} not found")));
    }
    Ok(Json(json!({"name": name})))
}

pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    axum::Extension(actor): axum::Extension<Actor>,
) -> ApiResult<StatusCode> {
    if name == actor.0 {
        return Err(ApiError::new(StatusCode::CONFLICT, "self", "you cannot delete yourself"));
    }
    if other_admins(&state, &name).await? == 0 {
        return Err(ApiError::new(StatusCode::CONFLICT, "last_admin", format!("{name} is the last admin")));
    }
    if !state.store.delete_user(&name).await? {
        return Err(ApiError::not_found(format!("user {name} not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// Any user's own password; the current one is asked again.
pub async fn own_password(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
    Json(c): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    if !state.store.verify_password(&actor.0, &c.current_password).await? {
        return Err(ApiError::invalid(
            "the current password is wrong",
            vec![Detail { path: "currentPassword".into(), reason: "does not match".into() }],
        ));
    }
    check_password("newPassword", &c.new_password)?;
    state.store.update_user(&actor.0, Some(&c.new_password), None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The user whose tokens a caller may see: their own, or (admins) anyone's.
fn scope(caller: Caller, actor: &Actor) -> Option<String> {
    (caller.role != Role::Admin).then(|| actor.0.clone())
}

pub async fn list_tokens(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"items": state.store.api_tokens(scope(caller, &actor).as_deref()).await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    description: String,
    /// `30d`, `12h`...; none: the token does not expire.
    ttl: Option<String>,
    /// Whose (admins only); the caller's by default.
    user: Option<String>,
}

/// A new API token, shown once.
pub async fn create_token(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(t): Json<NewToken>,
) -> ApiResult<Response> {
    let user = t.user.unwrap_or_else(|| actor.0.clone());
    if user != actor.0 && caller.role != Role::Admin {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "only admins make tokens for other users"));
    }
    if !state.store.users().await?.iter().any(|u| u.name == user) {
        return Err(ApiError::invalid(
            format!("user {user} not found"),
            vec![Detail { path: "user".into(), reason: "no such user".into() }],
        ));
    }
    let expires_at = match t.ttl.as_deref() {
        None | Some("") => None,
        Some(ttl) => {
            let d = meshgate_model::check::parse_duration(ttl)
                .map_err(|e| ApiError::invalid(format!("ttl: {e}"), vec![Detail { path: "ttl".into(), reason: e }]))?;
            let d = chrono::Duration::from_std(d).map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some((chrono::Utc::now() + d).to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }
    };
    let token = new_token();
    let id = state.store.add_api_token(&token, &user, &t.description, expires_at.as_deref()).await?;
    tracing::info!(%user, %id, by = %actor.0, "API token created");
    Ok((StatusCode::CREATED, Json(json!({"id": id, "user": user, "token": token, "expiresAt": expires_at})))
        .into_response())
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    axum::Extension(actor): axum::Extension<Actor>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<StatusCode> {
    if !state.store.revoke_token_id(&id, scope(caller, &actor).as_deref()).await? {
        return Err(ApiError::not_found(format!("API token {id} not found")));
    }
    Ok(StatusCode::NO_CONTENT)
}
