//! axum's extractors with our answer to bad input: a 4xx page (or JSON
//! error under `/api/v1`) with one sentence, instead of axum's plain
//! text.

use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;

use crate::Fail;

/// Whether the request is for `/api/v1` (nested routers see the path
/// without that prefix, so the original URI decides).
pub(crate) fn is_api(extensions: &axum::http::Extensions, uri: &axum::http::Uri) -> bool {
    extensions
        .get::<axum::extract::OriginalUri>()
        .map(|o| o.0.path())
        .unwrap_or(uri.path())
        .starts_with("/api/")
}

fn fail(status: axum::http::StatusCode, what: &str, detail: String, api: bool) -> Fail {
    let detail = detail
        .rsplit(": ")
        .next()
        .unwrap_or(&detail)
        .trim()
        .to_string();
    let f = Fail::page(
        status,
        format!("The {what} is malformed ({detail}); check it and try again."),
    );
    if api {
        f.json()
    } else {
        f
    }
}

/// A form body (`application/x-www-form-urlencoded`).
pub struct Form<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Form<T> {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let api = is_api(req.extensions(), req.uri());
        match axum::extract::Form::<T>::from_request(req, state).await {
            Ok(axum::extract::Form(v)) => Ok(Form(v)),
            Err(e) => Err(rejected_form(e, api).into_response()),
        }
    }
}

fn rejected_form(e: FormRejection, api: bool) -> Fail {
    fail(e.status(), "form", e.body_text(), api)
}

/// A JSON body.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Json::<T>::from_request(req, state).await {
            Ok(axum::extract::Json(v)) => Ok(Json(v)),
            Err(e) => Err(rejected_json(e).into_response()),
        }
    }
}

fn rejected_json(e: JsonRejection) -> Fail {
    fail(e.status(), "JSON body", e.body_text(), true)
}

/// The query string.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let api = is_api(&parts.extensions, &parts.uri);
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(e) => Err(rejected_query(e, api).into_response()),
        }
    }
}

fn rejected_query(e: QueryRejection, api: bool) -> Fail {
    fail(e.status(), "query string", e.body_text(), api)
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let api = is_api(&parts.extensions, &parts.uri);
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(e) => Err(rejected_path(e, api).into_response()),
        }
    }
}

fn rejected_path(e: PathRejection, api: bool) -> Fail {
    fail(e.status(), "address", e.body_text(), api)
}
