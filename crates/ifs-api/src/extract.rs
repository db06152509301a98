//! Extractors whose rejections are [`ApiError`]s: JSON bodies, query strings, and the
//! authenticated caller.

use axum::extract::{FromRef, FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum_extra::TypedHeader;
use axum_extra::headers::Authorization;
use axum_extra::headers::authorization::Bearer;
use ifs_auth::{Authenticator, Principal};

use crate::ApiError;

/// A JSON body; malformed or mistyped input is a 400 naming the field.
#[derive(Debug, Clone, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

/// A query string; a malformed one is a 400.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// The caller, authenticated exactly as `/me` does it: a valid EdDSA token whose session is alive.
#[derive(Debug, Clone, Copy)]
pub struct AuthUser(pub Principal);

impl<S> FromRequestParts<S> for AuthUser
where
    Authenticator: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let TypedHeader(Authorization(bearer)) =
            TypedHeader::<Authorization<Bearer>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::unauthorized())?;
        let principal = Authenticator::from_ref(state).authenticate(bearer.token()).await?;
        Ok(Self(principal))
    }
}

/// Takes back a dialogue `principal` just started (a first message, a fork) if their session
/// ended meanwhile: an erasure of the account (or a logout) that came between the token's check
/// and the start has already swept their dialogues, and this one must not be left behind it.
/// Answers 401 then, as the request would have been answered a moment later.
pub async fn keep_if_signed_in(
    auth: &Authenticator,
    dialogues: &dyn ifs_store::DialogueStore,
    principal: &Principal,
    started: ifs_domain::DialogueId,
) -> Result<(), ApiError> {
    let Err(gone) = auth.confirm(principal).await else { return Ok(()) };
    match dialogues.delete_dialogue(principal.user_id, started).await {
        Ok(()) | Err(ifs_store::StoreError::NotFound) => Err(gone.into()),
        Err(error) => Err(error.into()),
    }
}
