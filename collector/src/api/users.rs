//! `GET /api/v1/session` (who is logged in) and the console users:
//! `GET/POST /api/v1/users`, `DELETE /api/v1/users/{name}`. Changes need an
//! admin's console session; the read-only role is refused here, by the
//! server, whatever the page shows.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use super::{ApiError, ApiState};
use crate::auth::sessions::Principal;
use crate::auth::users::{Role, UserError, UserView};
use crate::clock::now_ms;

/// The principal allowed to change things, or why not.
fn admin(principal: Option<Extension<Principal>>) -> Result<Principal, ApiError> {
    match principal {
        Some(Extension(p)) if p.role == Role::Admin => Ok(p),
        Some(_) => Err(ApiError::Forbidden(
            "read-only users cannot change anything",
        )),
        None => Err(ApiError::Forbidden(
            "changes need an admin's console session",
        )),
    }
}

fn user_error(e: UserError) -> ApiError {
    match e {
        UserError::Exists(_) => ApiError::Conflict(e.to_string()),
        UserError::Invalid(why) => ApiError::bad("user", why),
        e => ApiError::Internal(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UserError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(user_error)
}

pub async fn session(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
) -> Json<Value> {
    let (user, role) = match principal {
        Some(Extension(p)) => (Some(p.user), Some(p.role)),
        None => (None, None),
    };
    Json(json!({"user": user, "role": role, "open": state.console.open}))
}

pub async fn list(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<Value>, ApiError> {
    admin(principal)?;
    let users = Arc::clone(&state.console.users);
    let list: Vec<UserView> = blocking(move || users.list()).await?;
    Ok(Json(json!({ "users": list })))
}

#[derive(Deserialize)]
pub struct NewUser {
    name: String,
    password: String,
    role: String,
}

pub async fn create(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
    Json(new): Json<NewUser>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let by = admin(principal)?;
    let role = Role::parse(&new.role)
        .ok_or_else(|| ApiError::bad("role", "must be `admin` or `read-only`"))?;
    let users = Arc::clone(&state.console.users);
    let name = new.name.clone();
    blocking(move || users.create(&name, &new.password, role, now_ms())).await?;
    info!(user = %new.name, role = role.as_str(), by = %by.user, "console user created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": new.name, "role": role})),
    ))
}

pub async fn delete(
    State(state): State<ApiState>,
    principal: Option<Extension<Principal>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let by = admin(principal)?;
    let users = Arc::clone(&state.console.users);
    let n = name.clone();
    if !blocking(move || users.delete(&n)).await? {
        return Err(ApiError::NotFound("no such user"));
    }
    state.console.sessions.remove_user(&name);
    info!(user = %name, by = %by.user, "console user deleted");
    Ok(StatusCode::NO_CONTENT)
}
