//! Steps: row-wise transformations of a dataset, each declaring what can change its
//! output (see [`StepDecl`]).
//!
//! Built in:
//!
//! - `tokenize[:max_len=N][:column=C]`: the built-in model's tokenizer (its
//!   `tokenizer.json`, whose SHA-256 is a declared parameter) over the text column `C`
//!   (default `text`), truncating at `N` tokens (default 256, special tokens included);
//!   adds `input_ids: List(UInt32)`.
//! - `embed:MODEL[:column=C]`: a model's embedding of column `C` (default `text`), through
//!   a [`TextEmbedder`]; adds `embedding: FixedSizeList(Float32, dims)`.
//! - `cmd:VERSION:COMMAND`: an external command (run by `sh -c`) that reads one JSON
//!   object per row on stdin and writes one JSON object per row on stdout, in order; its
//!   output rows replace the input rows. `VERSION` is its declared version: bump it when
//!   the command's behaviour changes. It must exit 0 and print exactly as many rows as it
//!   read.
//!
//! A step is a pure function of its input rows: the cache recomputes any shard from its
//! source rows, and checks that the result is the shard it had.

use std::fmt;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder, UInt32Builder};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use serde_json::json;

use crate::DatasetError;
use crate::fingerprint::StepDecl;

/// A row-wise transformation with a declaration.
pub trait Step: Send + Sync + fmt::Debug {
    /// What can change its output: id, version, parameters, output fields.
    fn decl(&self) -> StepDecl;

    /// The specification it was made from (`tokenize:max_len=128`), for messages and to
    /// make it again when a shard is recomputed; `None` for a step that cannot be
    /// specified in text (one written in Rust by the caller).
    fn spec(&self) -> Option<String>;

    /// Transforms one shard's rows; the output has exactly one row per input row.
    fn apply(&self, rows: &RecordBatch) -> Result<RecordBatch, DatasetError>;
}

/// A model that embeds texts, for the `embed` step.
pub trait TextEmbedder: Send + Sync + fmt::Debug {
    /// The model's name, as `embed:MODEL` names it.
    fn model(&self) -> &str;
    /// Everything that identifies its weights and code (version, artifact digest): part of
    /// the step's declared parameters.
    fn version(&self) -> String;
    /// Dimensions of one embedding.
    fn dims(&self) -> usize;
    /// One embedding of `dims()` floats per text, in order.
    fn embed(
        &self,
        texts: &[&str],
    ) -> Result<Vec<Vec<f32>>, Box<dyn std::error::Error + Send + Sync>>;
}

/// Finds a [`TextEmbedder`] by model name (the model registry, in a server).
pub trait Embedders: Send + Sync + fmt::Debug {
    /// The embedder of `model`, or an error naming what is served.
    fn embedder(&self, model: &str) -> Result<Arc<dyn TextEmbedder>, DatasetError>;
}

/// What resolving a step specification needs.
#[derive(Debug, Clone, Default)]
pub struct StepContext {
    /// The built-in model's `tokenizer.json` (for `tokenize`).
    pub tokenizer: Option<PathBuf>,
    /// The models `embed` may use.
    pub embedders: Option<Arc<dyn Embedders>>,
}

/// Parses and resolves a step specification (see the [module docs](self)).
pub fn parse(spec: &str, ctx: &StepContext) -> Result<Arc<dyn Step>, DatasetError> {
    let invalid = |reason: String| DatasetError::InvalidStep {
        spec: spec.to_owned(),
        reason,
    };
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "tokenize" => {
            let mut max_len = 256usize;
            let mut column = "text".to_owned();
            for (k, v) in options(rest, spec)? {
                match k.as_str() {
                    "max_len" => {
                        max_len = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            invalid(format!("max_len `{v}` is not a positive integer"))
                        })?;
                    }
                    "column" => column = v,
                    other => {
                        return Err(invalid(format!(
                            "unknown option `{other}` (max_len, column)"
                        )));
                    }
                }
            }
            let path = ctx.tokenizer.clone().ok_or_else(|| {
                invalid("no tokenizer.json is configured (the built-in model's files)".to_owned())
            })?;
            Ok(Arc::new(Tokenize::new(&path, max_len, column, spec)?))
        }
        "embed" => {
            let mut parts = rest.splitn(2, ':');
            let model = parts.next().unwrap_or("").to_owned();
            if model.is_empty() {
                return Err(invalid("embed needs a model: embed:MODEL".to_owned()));
            }
            let mut column = "text".to_owned();
            for (k, v) in options(parts.next().unwrap_or(""), spec)? {
                match k.as_str() {
                    "column" => column = v,
                    other => return Err(invalid(format!("unknown option `{other}` (column)"))),
                }
            }
            let embedders = ctx.embedders.as_ref().ok_or_else(|| {
                invalid("no model registry is available to embed with".to_owned())
            })?;
            let embedder = embedders.embedder(&model)?;
            Ok(Arc::new(Embed {
                embedder,
                column,
                spec: spec.to_owned(),
            }))
        }
        "cmd" => {
            let (version, command) = rest
                .split_once(':')
                .ok_or_else(|| invalid("expected cmd:VERSION:COMMAND".to_owned()))?;
            if version.trim().is_empty() {
                return Err(DatasetError::Unversioned {
                    step: spec.to_owned(),
                });
            }
            if command.trim().is_empty() {
                return Err(invalid("the command is empty".to_owned()));
            }
            Ok(Arc::new(External {
                version: version.to_owned(),
                command: command.to_owned(),
                spec: spec.to_owned(),
            }))
        }
        other => Err(invalid(format!(
            "unknown step `{other}` (tokenize, embed:MODEL, cmd:VERSION:COMMAND)"
        ))),
    }
}

fn options(rest: &str, spec: &str) -> Result<Vec<(String, String)>, DatasetError> {
    rest.split([':', ','])
        .filter(|s| !s.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| DatasetError::InvalidStep {
                    spec: spec.to_owned(),
                    reason: format!("`{kv}` is not KEY=VALUE"),
                })
        })
        .collect()
}

/// `name: type` of every field, as declarations and manifests write them.
pub fn fields(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect()
}

fn text_column<'a>(
    rows: &'a RecordBatch,
    column: &str,
    step: &str,
) -> Result<Vec<&'a str>, DatasetError> {
    let col = rows.column_by_name(column).ok_or_else(|| {
        DatasetError::step(
            step,
            format!(
                "no column `{column}` (the rows have: {})",
                fields(&rows.schema()).join(", ")
            ),
        )
    })?;
    let strings = col.as_any().downcast_ref::<StringArray>().ok_or_else(|| {
        DatasetError::step(
            step,
            format!("column `{column}` is {}, not Utf8 text", col.data_type()),
        )
    })?;
    (0..strings.len())
        .map(|i| {
            if strings.is_null(i) {
                Err(DatasetError::step(
                    step,
                    format!("row {i} of the shard has no `{column}`"),
                ))
            } else {
                Ok(strings.value(i))
            }
        })
        .collect()
}

fn append_column(
    rows: &RecordBatch,
    field: Field,
    array: ArrayRef,
    step: &str,
) -> Result<RecordBatch, DatasetError> {
    if rows.schema().column_with_name(field.name()).is_some() {
        return Err(DatasetError::step(
            step,
            format!("the rows already have a column `{}`", field.name()),
        ));
    }
    let mut fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(field);
    let mut columns = rows.columns().to_vec();
    columns.push(array);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| DatasetError::arrow(format!("step `{step}`"), e))
}

/// The `tokenize` step.
#[derive(Debug)]
pub struct Tokenize {
    tokenizer: tokenizers::Tokenizer,
    tokenizer_sha256: String,
    max_len: usize,
    column: String,
    spec: String,
}

impl Tokenize {
    /// Loads `tokenizer.json`.
    pub fn new(
        tokenizer_json: &Path,
        max_len: usize,
        column: String,
        spec: &str,
    ) -> Result<Self, DatasetError> {
        let bytes = std::fs::read(tokenizer_json).map_err(|e| DatasetError::InvalidStep {
            spec: spec.to_owned(),
            reason: format!("cannot read {}: {e}", tokenizer_json.display()),
        })?;
        let sha = infercache_artifact::Digest::sha256_of(&bytes).hex();
        let mut tokenizer =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| DatasetError::InvalidStep {
                spec: spec.to_owned(),
                reason: format!("{}: {e}", tokenizer_json.display()),
            })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..tokenizers::TruncationParams::default()
            }))
            .map_err(|e| DatasetError::InvalidStep {
                spec: spec.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            tokenizer,
            tokenizer_sha256: sha,
            max_len,
            column,
            spec: spec.to_owned(),
        })
    }

    fn field() -> Field {
        Field::new(
            "input_ids",
            DataType::List(Arc::new(Field::new_list_field(DataType::UInt32, true))),
            false,
        )
    }
}

impl Step for Tokenize {
    fn decl(&self) -> StepDecl {
        StepDecl {
            id: "tokenize".to_owned(),
            version: "1".to_owned(),
            params: json!({
                "column": self.column,
                "max_len": self.max_len,
                "tokenizer": format!("sha256:{}", self.tokenizer_sha256),
                "special_tokens": true,
            }),
            output: Some(vec![format!(
                "+{}: {}",
                "input_ids",
                Self::field().data_type()
            )]),
        }
    }

    fn spec(&self) -> Option<String> {
        Some(self.spec.clone())
    }

    fn apply(&self, rows: &RecordBatch) -> Result<RecordBatch, DatasetError> {
        let texts = text_column(rows, &self.column, &self.spec)?;
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| DatasetError::step(&self.spec, e.to_string()))?;
        let mut builder = ListBuilder::new(UInt32Builder::new());
        for e in &encodings {
            builder.values().append_slice(e.get_ids());
            builder.append(true);
        }
        append_column(rows, Self::field(), Arc::new(builder.finish()), &self.spec)
    }
}

/// The `embed` step.
#[derive(Debug)]
pub struct Embed {
    embedder: Arc<dyn TextEmbedder>,
    column: String,
    spec: String,
}

impl Embed {
    fn field(&self) -> Field {
        Field::new(
            "embedding",
            DataType::FixedSizeList(
                Arc::new(Field::new_list_field(DataType::Float32, true)),
                i32::try_from(self.embedder.dims()).unwrap_or(i32::MAX),
            ),
            false,
        )
    }
}

impl Step for Embed {
    fn decl(&self) -> StepDecl {
        StepDecl {
            id: "embed".to_owned(),
            version: "1".to_owned(),
            params: json!({
                "model": self.embedder.model(),
                "model_version": self.embedder.version(),
                "column": self.column,
            }),
            output: Some(vec![format!("+embedding: {}", self.field().data_type())]),
        }
    }

    fn spec(&self) -> Option<String> {
        Some(self.spec.clone())
    }

    fn apply(&self, rows: &RecordBatch) -> Result<RecordBatch, DatasetError> {
        let texts = text_column(rows, &self.column, &self.spec)?;
        let dims = self.embedder.dims();
        let mut builder = FixedSizeListBuilder::new(
            Float32Builder::new(),
            i32::try_from(dims).unwrap_or(i32::MAX),
        );
        for chunk in texts.chunks(32) {
            let vectors = self
                .embedder
                .embed(chunk)
                .map_err(|e| DatasetError::step(&self.spec, e.to_string()))?;
            if vectors.len() != chunk.len() || vectors.iter().any(|v| v.len() != dims) {
                return Err(DatasetError::step(
                    &self.spec,
                    format!(
                        "the model answered {} embeddings for {} texts (each must have {dims} floats)",
                        vectors.len(),
                        chunk.len()
                    ),
                ));
            }
            for v in vectors {
                builder.values().append_slice(&v);
                builder.append(true);
            }
        }
        append_column(rows, self.field(), Arc::new(builder.finish()), &self.spec)
    }
}

/// The `cmd` step: an external command over JSON lines.
#[derive(Debug)]
pub struct External {
    version: String,
    command: String,
    spec: String,
}

impl Step for External {
    fn decl(&self) -> StepDecl {
        StepDecl {
            id: "cmd".to_owned(),
            version: self.version.clone(),
            params: json!({ "command": self.command }),
            output: None,
        }
    }

    fn spec(&self) -> Option<String> {
        Some(self.spec.clone())
    }

    fn apply(&self, rows: &RecordBatch) -> Result<RecordBatch, DatasetError> {
        let fail = |reason: String| DatasetError::step(&self.spec, reason);
        let mut input = Vec::new();
        {
            let mut writer = arrow_json::LineDelimitedWriter::new(&mut input);
            writer
                .write_batches(&[rows])
                .and_then(|()| writer.finish())
                .map_err(|e| fail(format!("cannot write its input as JSON: {e}")))?;
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start `sh -c {}`: {e}", self.command)))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let feeder = std::thread::spawn(move || {
            // A command that stops reading early gets EPIPE here; its exit status and row
            // count say what went wrong.
            let _ = stdin.write_all(&input);
        });
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let mut output = Vec::new();
        child
            .stdout
            .take()
            .expect("stdout is piped")
            .read_to_end(&mut output)
            .map_err(|e| fail(format!("reading its output: {e}")))?;
        let status = child
            .wait()
            .map_err(|e| fail(format!("waiting for it: {e}")))?;
        let _ = feeder.join();
        let err = err_reader.join().unwrap_or_default();
        if !status.success() {
            let tail = String::from_utf8_lossy(&err);
            let tail = tail.trim();
            let tail: String = tail
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(fail(format!("exited with {status}: {tail}")));
        }
        let lines = output
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .count();
        if lines != rows.num_rows() {
            return Err(fail(format!(
                "printed {lines} rows for {} input rows; it must print one JSON object per input row",
                rows.num_rows()
            )));
        }
        if lines == 0 {
            return Ok(rows.clone());
        }
        let (schema, _) =
            arrow_json::reader::infer_json_schema(std::io::Cursor::new(&output), None)
                .map_err(|e| fail(format!("its output is not JSON objects: {e}")))?;
        let schema = Arc::new(schema);
        let reader = arrow_json::ReaderBuilder::new(schema.clone())
            .with_batch_size(lines)
            .build(std::io::Cursor::new(&output))
            .map_err(|e| fail(e.to_string()))?;
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("its output is not JSON objects: {e}")))?;
        arrow_select::concat::concat_batches(&schema, &batches)
            .map_err(|e| DatasetError::arrow(format!("step `{}`", self.spec), e))
    }
}
