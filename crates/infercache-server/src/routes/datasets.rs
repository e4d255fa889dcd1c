//! The dataset cache over HTTP (`--datasets-dir`), so that a training process on another
//! machine reads the batches the `datasets` commands built.
//!
//! - `GET /v1/datasets`: `{"object": "list", "data": [...]}`, each dataset as
//!   `datasets ls --json` shows it (`name`, `fingerprint`, `rows`, `shards`,
//!   `shards_cached`, `bytes`, `bytes_cached`, `recomputable`, `built_ms`).
//! - `GET /v1/datasets/{name}`: the dataset in full, as `datasets show --json` prints it
//!   (`name`, `manifest` with the fingerprint chain, schema and shards, `record`,
//!   `files`). `{name}` may also be a fingerprint.
//! - `GET /v1/datasets/{name}/batches`: its rows, streamed as they are read, with the
//!   options of `datasets stream`: `batch` (rows per batch, default 32), `prefetch`
//!   (batches decoded ahead, default 4, at most 64), `shuffle` (a seed), `epoch`
//!   (default 0), `resume` (a token), `format` (`jsonl`, the default, one JSON object per
//!   row, `application/x-ndjson`; or `arrow`, an Arrow IPC stream,
//!   `application/vnd.apache.arrow.stream`). The bytes are those the command writes.
//!
//! **Resume.** A batches response carries `X-Resume-Token`, the token of its first row,
//! `X-Dataset-Position` (rows of the epoch before it) and `X-Dataset-Rows` (rows in the
//! dataset). A token is `v1.FINGERPRINT.SEED.EPOCH.POSITION`; a client that has read `n`
//! rows of a response continues with that token's `POSITION` plus `n`, which yields
//! exactly the rest of the sequence, shuffled or not.
//!
//! Errors: an unknown dataset 404 `dataset_not_found`; a bad name, option or token 400
//! naming the parameter; a server without `--datasets-dir` 404 `datasets_disabled`; more
//! than [`MAX_DATASET_STREAMS`] streams at once 429. The first batch is read before the
//! response starts, so a dataset that cannot be read fails with a status; a failure
//! later (a shard that can no longer be recomputed) ends the response early, without
//! its final chunk, which an HTTP client reports as an incomplete body.
//!
//! Every dataset is readable with any API key: datasets are not per tenant.

use std::io;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use infercache_datasets::{BatchWriter, OutputFormat, StreamOptions};
use serde_json::json;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::routes::path_name;
use crate::state::{AppState, Datasets, MAX_DATASET_STREAMS};

/// Most batches a stream decodes ahead of its client.
pub const MAX_PREFETCH: usize = 64;

/// Encoded batches waiting for the client, per stream.
const SEND_AHEAD: usize = 4;

fn datasets(state: &AppState) -> Result<Datasets, ApiError> {
    state.datasets().cloned().ok_or(ApiError::DatasetsDisabled)
}

/// Runs `f` with the cache on the blocking pool (every dataset call is file I/O).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// `GET /v1/datasets`.
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Response, ApiError> {
    let d = datasets(&state)?;
    let items = blocking(move || Ok(d.cache.list()?)).await?;
    Ok(axum::Json(json!({ "object": "list", "data": items })).into_response())
}

/// `GET /v1/datasets/{name}`.
pub async fn show(
    State(state): State<AppState>,
    _caller: Caller,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let d = datasets(&state)?;
    let name = path_name(name)?;
    infercache_datasets::check_key(&name)?;
    let details = blocking(move || {
        d.cache
            .details(&name)?
            .ok_or(ApiError::DatasetNotFound(name))
    })
    .await?;
    Ok(axum::Json(details).into_response())
}

/// The options of a batches request, each refused with a 400 naming it.
fn options(query: Option<&str>) -> Result<(StreamOptions, OutputFormat), ApiError> {
    let mut options = StreamOptions::default();
    let mut format = OutputFormat::default();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if seen.iter().any(|k| *k == key) {
            return Err(ApiError::invalid(key, "given more than once"));
        }
        seen.push(key.to_string());
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| ApiError::invalid(key.as_ref(), format!("`{value}` is not {what}")))
        };
        match key.as_ref() {
            "batch" => {
                options.batch_size = usize::try_from(number("a positive integer")?)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ApiError::invalid("batch", "must be at least 1"))?;
            }
            "prefetch" => {
                options.prefetch = usize::try_from(number("an integer")?)
                    .ok()
                    .filter(|n| *n <= MAX_PREFETCH)
                    .ok_or_else(|| {
                        ApiError::invalid("prefetch", format!("must be at most {MAX_PREFETCH}"))
                    })?;
            }
            "shuffle" => options.shuffle = Some(number("a seed (an unsigned integer)")?),
            "epoch" => options.epoch = number("an epoch (an unsigned integer)")?,
            "resume" => options.resume = Some(value.to_string()),
            "format" => {
                format = value
                    .parse()
                    .map_err(|e: String| ApiError::invalid("format", e))?;
            }
            other => {
                return Err(ApiError::UnsupportedField {
                    field: other.to_owned(),
                    hint: "the options are batch, prefetch, shuffle, epoch, resume, format"
                        .to_owned(),
                });
            }
        }
    }
    Ok((options, format))
}

/// `GET /v1/datasets/{name}/batches`.
pub async fn batches(
    State(state): State<AppState>,
    _caller: Caller,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let d = datasets(&state)?;
    let name = path_name(name)?;
    infercache_datasets::check_key(&name)?;
    let (options, format) = options(query.as_deref())?;
    let permit = d
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams {
            limit: MAX_DATASET_STREAMS,
        })?;
    // Open the stream and encode its first batch before answering, so that what fails at
    // once fails with a status.
    let (mut stream, first, head) = blocking(move || {
        let mut stream = d.cache.stream_dataset(&name, options)?;
        let head = [
            ("x-resume-token", stream.resume_token()),
            ("x-dataset-position", stream.position().to_string()),
            ("x-dataset-rows", stream.rows().to_string()),
        ];
        let mut writer = BatchWriter::new(format);
        let first = match stream.next() {
            Some(batch) => writer.write(&batch?)?,
            None => writer.finish()?,
        };
        Ok(((stream, writer), first, head))
    })
    .await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, io::Error>>(SEND_AHEAD);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let (stream, writer) = &mut stream;
        let send = |chunk: Result<Vec<u8>, io::Error>| {
            // An error from the channel: the client went away; dropping the stream stops
            // its producer.
            tx.blocking_send(chunk.map(Bytes::from)).is_ok()
        };
        if !send(Ok(first)) {
            return;
        }
        for batch in stream {
            let bytes = batch.and_then(|b| writer.write(&b));
            match bytes {
                Ok(bytes) => {
                    if !send(Ok(bytes)) {
                        return;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "a dataset stream failed after its first batch");
                    send(Err(io::Error::other(error)));
                    return;
                }
            }
        }
        match writer.finish() {
            Ok(end) => {
                send(Ok(end));
            }
            Err(error) => {
                send(Err(io::Error::other(error)));
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    for (name, value) in head {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_each_bad_one_is_named() {
        let (o, f) = options(Some("batch=8&prefetch=2&shuffle=7&epoch=3&format=arrow")).unwrap();
        assert_eq!(
            (o.batch_size, o.prefetch, o.shuffle, o.epoch, f),
            (8, 2, Some(7), 3, OutputFormat::Arrow)
        );
        let (o, f) = options(None).unwrap();
        assert_eq!((o, f), (StreamOptions::default(), OutputFormat::Jsonl));
        for (query, param) in [
            ("batch=0", "batch"),
            ("batch=x", "batch"),
            ("prefetch=65", "prefetch"),
            ("shuffle=-1", "shuffle"),
            ("epoch=one", "epoch"),
            ("format=csv", "format"),
            ("batch=1&batch=2", "batch"),
            ("colour=red", "colour"),
        ] {
            let e = options(Some(query)).unwrap_err();
            assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST, "{query}");
            assert!(e.to_string().contains(param), "{query}: {e}");
        }
    }
}
