//! The file formats: reading a job's records, writing its outputs and errors.
//!
//! | format | a record | its output |
//! |---|---|---|
//! | `csv` | a row of a CSV with a header, Ersilia's `key,input` or a named `--column` | `key,input,<the model's output columns>` |
//! | `jsonl` | a JSON string, or an object with `input` and an optional `key` | `{"key", "input", "output"}` |
//! | `openai-batch` | `{custom_id, method, url, body: {model, input}}` (`/v1/embeddings`) | `{id, custom_id, response: {status_code, body}, error}` |
//! | `lines` | a line of text (blank lines skipped), or a string of a JSON array if the file starts with `[` | as `jsonl` |
//!
//! A record that cannot be read (bad JSON, a missing column, an empty input, an input
//! over the size limit) is kept as a failed [`Record`]: it goes to the errors file and
//! the job goes on. A key that is not given is the record's line number.

use std::fmt;
use std::str::FromStr;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::JobError;
use crate::input::Input;
use crate::model::Output;

/// A job's file format, in and out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// CSV with a header (Ersilia's shape).
    Csv,
    /// JSON lines.
    Jsonl,
    /// OpenAI Batch API input and output lines.
    OpenaiBatch,
    /// Plain text, one input per line, or a JSON array of strings (`infercache warm`'s
    /// files); the output is JSON lines.
    Lines,
}

impl Format {
    /// The format a file name suggests: `.csv`, else JSON lines.
    pub fn guess(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("csv") => Self::Csv,
            _ => Self::Jsonl,
        }
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "csv" => Ok(Self::Csv),
            "jsonl" => Ok(Self::Jsonl),
            "openai-batch" => Ok(Self::OpenaiBatch),
            "lines" => Ok(Self::Lines),
            other => Err(format!(
                "unknown format `{other}`: use csv, jsonl, openai-batch or lines"
            )),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
            Self::OpenaiBatch => "openai-batch",
            Self::Lines => "lines",
        })
    }
}

/// What a model takes as a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// Texts (embedders, Ersilia models): every input must be a string.
    Text,
    /// Any JSON value (plain JSON models).
    Json,
}

/// How records are read: the format, the CSV column, the model's input kind and the
/// size limit.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// The format.
    pub format: Format,
    /// The CSV column holding the input [default: `input`, or the only column other than
    /// `key`].
    pub column: Option<String>,
    /// What the model takes.
    pub kind: InputKind,
    /// Most characters in one input (a JSON input: in its compact text).
    pub max_input_chars: usize,
}

/// One record of the input: a line (JSON lines, OpenAI batch) or a row (CSV).
#[derive(Debug, Clone)]
pub struct Record {
    /// Its 1-based line number (CSV: counting the header).
    pub line: usize,
    /// Its key (CSV `key`, JSON `key`, OpenAI `custom_id`), else its line number.
    pub key: String,
    /// Its inputs (one, except an OpenAI line whose `input` is an array), each in its
    /// canonical form, or why it cannot be read.
    pub inputs: Result<Vec<Input>, String>,
}

/// Reads every record of `bytes`.
///
/// # Errors
/// [`JobError::Input`] only for what makes the whole file unreadable: not UTF-8, a CSV
/// without a header or without the input column. A bad record is a failed [`Record`].
pub fn read(bytes: &[u8], options: &ReadOptions) -> Result<Vec<Record>, JobError> {
    match options.format {
        Format::Csv => read_csv(bytes, options),
        Format::Lines => read_lines(bytes, options),
        Format::Jsonl | Format::OpenaiBatch => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| JobError::Input(format!("the input is not UTF-8: {e}")))?;
            Ok(text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
                .map(|(i, l)| {
                    let line = i + 1;
                    if options.format == Format::Jsonl {
                        jsonl_record(line, l, options)
                    } else {
                        openai_record(line, l, options)
                    }
                })
                .collect())
        }
    }
}

fn read_csv(bytes: &[u8], options: &ReadOptions) -> Result<Vec<Record>, JobError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let header = reader
        .headers()
        .map_err(|e| JobError::Input(format!("reading the CSV header: {e}")))?
        .clone();
    let names: Vec<&str> = header.iter().collect();
    let key_col = names.iter().position(|n| *n == "key");
    let input_col = match &options.column {
        Some(c) => names.iter().position(|n| n == c).ok_or_else(|| {
            JobError::Input(format!(
                "the CSV has no column `{c}`; its columns are {}",
                names.join(", ")
            ))
        })?,
        None => match names.iter().position(|n| *n == "input") {
            Some(i) => i,
            None => {
                let others: Vec<usize> = (0..names.len()).filter(|i| Some(*i) != key_col).collect();
                match others[..] {
                    [only] => only,
                    _ => {
                        return Err(JobError::Input(format!(
                            "the CSV has no `input` column; name the input column with --column (its columns are {})",
                            names.join(", ")
                        )));
                    }
                }
            }
        },
    };
    let mut records = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i + 2;
        let record = match row {
            Err(e) => Record {
                line,
                key: line.to_string(),
                inputs: Err(format!("not a CSV row: {e}")),
            },
            Ok(row) => {
                let key = key_col
                    .and_then(|k| row.get(k))
                    .filter(|k| !k.is_empty())
                    .map_or_else(|| line.to_string(), str::to_owned);
                let inputs = match row.get(input_col) {
                    None => Err(format!(
                        "the row has {} fields; the input is column {}",
                        row.len(),
                        input_col + 1
                    )),
                    Some(text) => check_string(text, options).map(|v| vec![v]),
                };
                Record { line, key, inputs }
            }
        };
        records.push(record);
    }
    Ok(records)
}

fn jsonl_record(line: usize, text: &str, options: &ReadOptions) -> Record {
    let mut key = line.to_string();
    let inputs = (|| {
        // Read as raw JSON: the input is canonicalized from its own text (numbers as the
        // file wrote them), never built into a tree of values. An object line is parsed
        // once, straight into its fields.
        let input = match text.trim_start().as_bytes().first() {
            Some(b'{') => {
                let mut obj: BTreeMap<String, &RawValue> =
                    serde_json::from_str(text).map_err(|e| format!("not a JSON value: {e}"))?;
                if let Some(k) = obj.remove("key") {
                    match serde_json::from_str::<Value>(k.get()) {
                        Ok(Value::String(k)) => key = k,
                        Ok(Value::Number(n)) => key = n.to_string(),
                        Ok(Value::Null) => {}
                        _ => {
                            return Err(format!(
                                "`key` must be a string or a number, not {}",
                                k.get()
                            ));
                        }
                    }
                }
                let input = obj
                    .remove("input")
                    .ok_or_else(|| "the object has no `input`".to_owned())?;
                if let Some(extra) = obj.keys().next() {
                    return Err(format!(
                        "unknown field `{extra}`: a line is a string or an object with `input` and `key`"
                    ));
                }
                input
            }
            _ => {
                let raw: &RawValue =
                    serde_json::from_str(text).map_err(|e| format!("not a JSON value: {e}"))?;
                if !raw.get().starts_with('"') {
                    return Err(format!(
                        "a line is a JSON string or an object with `input`, not {}",
                        infercache_core::canonical::raw_type_name(raw)
                    ));
                }
                raw
            }
        };
        check_raw(input, options).map(|v| vec![v])
    })();
    Record { line, key, inputs }
}

fn openai_record(line: usize, text: &str, options: &ReadOptions) -> Record {
    let mut key = line.to_string();
    let inputs = (|| {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON value: {e}"))?;
        let Value::Object(mut obj) = value else {
            return Err("a batch line is a JSON object".to_owned());
        };
        match obj.remove("custom_id") {
            Some(Value::String(id)) if !id.is_empty() => key = id,
            _ => return Err("`custom_id` must be a non-empty string".to_owned()),
        }
        match obj.remove("method") {
            Some(Value::String(m)) if m == "POST" => {}
            _ => return Err("`method` must be \"POST\"".to_owned()),
        }
        match obj.remove("url") {
            Some(Value::String(u)) if u == "/v1/embeddings" => {}
            Some(Value::String(u)) => {
                return Err(format!(
                    "`url` {u} is not supported: bulk jobs run /v1/embeddings"
                ));
            }
            _ => return Err("`url` must be a string".to_owned()),
        }
        let Some(Value::Object(mut body)) = obj.remove("body") else {
            return Err("`body` must be an object".to_owned());
        };
        body.remove("model");
        match body.remove("encoding_format") {
            None => {}
            Some(Value::String(f)) if f == "float" => {}
            Some(other) => {
                return Err(format!(
                    "`encoding_format` {other} is not supported: use \"float\""
                ));
            }
        }
        let input = body
            .remove("input")
            .ok_or_else(|| "`body` has no `input`".to_owned())?;
        if let Some(extra) = body.keys().next() {
            return Err(format!("`body.{extra}` is not supported"));
        }
        let inputs = match input {
            Value::Array(items) if items.is_empty() => {
                return Err("`input` is an empty array".to_owned());
            }
            Value::Array(items) => items,
            one => vec![one],
        };
        inputs
            .into_iter()
            .map(|i| check_value(i, options))
            .collect()
    })();
    Record { line, key, inputs }
}

/// A `lines` file: a JSON array of strings if its first non-blank character is `[` (each
/// element a record keyed by its index from 1, `line` 1), else one text per line, line
/// endings kept off and blank lines skipped.
fn read_lines(bytes: &[u8], options: &ReadOptions) -> Result<Vec<Record>, JobError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| JobError::Input(format!("the input is not UTF-8: {e}")))?;
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
            JobError::Input(format!(
                "the input starts with `[` but is not a JSON array: {e}"
            ))
        })?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, raw)| Record {
                line: 1,
                key: (i + 1).to_string(),
                inputs: if raw.get().starts_with('"') {
                    check_raw(raw, options).map(|input| vec![input])
                } else {
                    Err(format!(
                        "element {} is not a string but {}",
                        i + 1,
                        infercache_core::canonical::raw_type_name(raw)
                    ))
                },
            })
            .collect());
    }
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| Record {
            line: i + 1,
            key: (i + 1).to_string(),
            inputs: check_string(l, options).map(|input| vec![input]),
        })
        .collect())
}

/// A string input if the model takes it: non-empty, within the size limit.
fn check_string(text: &str, options: &ReadOptions) -> Result<Input, String> {
    let chars = text.chars().count();
    if chars == 0 || text.trim().is_empty() {
        return Err("the input is empty".to_owned());
    }
    if chars > options.max_input_chars {
        return Err(too_long(chars, options));
    }
    Ok(match options.kind {
        InputKind::Text => Input::text(text),
        InputKind::Json => Input::json_string(text),
    })
}

/// A JSON input as its raw text, if the model takes it: a string for a text model,
/// non-empty, within the size limit (counted in its canonical text).
fn check_raw(raw: &RawValue, options: &ReadOptions) -> Result<Input, String> {
    if raw.get().starts_with('"') {
        let text: std::borrow::Cow<'_, str> =
            serde_json::from_str(raw.get()).map_err(|e| format!("not a JSON string: {e}"))?;
        return check_string(&text, options);
    }
    if options.kind == InputKind::Text {
        return Err(format!(
            "the model takes texts; the input is {}",
            infercache_core::canonical::raw_type_name(raw)
        ));
    }
    if raw.get() == "null" {
        return Err("the input is empty".to_owned());
    }
    // A cheap bound first: the canonical text is never longer than the raw one.
    if raw.get().len() > options.max_input_chars {
        let canonical = Input::json(raw.get())?;
        let chars =
            std::str::from_utf8(canonical.canonical().as_bytes()).map_or(0, |t| t.chars().count());
        if chars > options.max_input_chars {
            return Err(too_long(chars, options));
        }
        return Ok(canonical);
    }
    Input::json(raw.get())
}

/// [`check_raw`] of a parsed value (OpenAI batch lines).
fn check_value(input: Value, options: &ReadOptions) -> Result<Input, String> {
    match input {
        Value::String(s) => check_string(&s, options),
        other => {
            let raw = serde_json::value::to_raw_value(&other)
                .map_err(|e| format!("the input cannot be written as JSON: {e}"))?;
            check_raw(&raw, options)
        }
    }
}

fn too_long(chars: usize, options: &ReadOptions) -> String {
    format!(
        "the input has {chars} characters; at most {} are allowed",
        options.max_input_chars
    )
}

/// Writes output records in one format. CSV columns are the first output's (an object's
/// keys, else `output_0..` for an array, else `output`), and are kept in the journal so
/// that a resumed job writes the same ones.
#[derive(Debug, Clone)]
pub struct Writer {
    format: Format,
    model: String,
    /// The CSV columns after `key,input`, once known (the header is then written).
    pub columns: Option<Vec<String>>,
}

impl Writer {
    /// A writer for `format`, for `model`'s outputs, with the CSV columns of a job
    /// already begun.
    pub fn new(format: Format, model: &str, columns: Option<Vec<String>>) -> Self {
        Self {
            format,
            model: model.to_owned(),
            columns,
        }
    }

    /// Appends the output of `record`, whose inputs gave `outputs`, to `out`.
    pub fn output(
        &mut self,
        out: &mut Vec<u8>,
        record: &Record,
        inputs: &[Input],
        outputs: &[Output],
    ) {
        match self.format {
            Format::Jsonl | Format::Lines => {
                // `{"input", "key", "output"}`, the keys in order, written in place.
                let key = serde_json::to_string(&record.key).expect("a string serializes");
                for (input, output) in inputs.iter().zip(outputs) {
                    out.extend_from_slice(b"{\"input\":");
                    input.write_json(out);
                    out.extend_from_slice(b",\"key\":");
                    out.extend_from_slice(key.as_bytes());
                    out.extend_from_slice(b",\"output\":");
                    out.extend_from_slice(output.as_str().as_bytes());
                    out.extend_from_slice(b"}\n");
                }
            }
            Format::OpenaiBatch => {
                let data: Vec<Value> = outputs
                    .iter()
                    .enumerate()
                    .map(|(i, e)| json!({ "object": "embedding", "index": i, "embedding": e }))
                    .collect();
                let line = json!({
                    "id": format!("batch_req_{}", record.line),
                    "custom_id": record.key,
                    "response": {
                        "status_code": 200,
                        "body": {
                            "object": "list",
                            "data": data,
                            "model": self.model,
                            "usage": { "prompt_tokens": 0, "total_tokens": 0 },
                        },
                    },
                    "error": null,
                });
                push_line(out, &line);
            }
            Format::Csv => {
                for (input, output) in inputs.iter().zip(outputs) {
                    let output = output.to_value();
                    let columns = self.columns.get_or_insert_with(|| {
                        let cols = columns_of(&output);
                        let mut header = vec!["key".to_owned(), "input".to_owned()];
                        header.extend(cols.iter().cloned());
                        push_csv(out, &header);
                        cols
                    });
                    let mut row = vec![record.key.clone(), cell(&input.to_value())];
                    row.extend(cells(&output, columns));
                    push_csv(out, &row);
                }
            }
        }
    }

    /// Appends the error line of `record` (its line, key, input and why it failed) to
    /// `out`.
    pub fn error(out: &mut Vec<u8>, record: &Record, input: Option<&Input>, reason: &str) {
        let line = json!({
            "line": record.line,
            "key": record.key,
            "input": input.map(Input::to_value),
            "reason": reason,
        });
        push_line(out, &line);
    }
}

fn push_line(out: &mut Vec<u8>, v: &Value) {
    serde_json::to_writer(&mut *out, v).expect("writing JSON to memory cannot fail");
    out.push(b'\n');
}

fn push_csv(out: &mut Vec<u8>, fields: &[String]) {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    w.write_record(fields)
        .expect("writing CSV to memory cannot fail");
    out.extend(w.into_inner().expect("flushing CSV to memory cannot fail"));
}

/// The output columns `v` suggests.
fn columns_of(v: &Value) -> Vec<String> {
    match v {
        Value::Object(obj) => obj.keys().cloned().collect(),
        Value::Array(items) => (0..items.len()).map(|i| format!("output_{i}")).collect(),
        _ => vec!["output".to_owned()],
    }
}

/// `v`'s cells under `columns`.
fn cells(v: &Value, columns: &[String]) -> Vec<String> {
    match v {
        Value::Object(obj) => columns
            .iter()
            .map(|c| obj.get(c).map(cell).unwrap_or_default())
            .collect(),
        Value::Array(items) => (0..columns.len())
            .map(|i| items.get(i).map(cell).unwrap_or_default())
            .collect(),
        other => vec![cell(other)],
    }
}

/// One CSV cell: a string as is, null empty, anything else as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// An object of parameters from `--parameters` text.
///
/// # Errors
/// A message when the text is not a JSON object.
pub fn parameters(text: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err("parameters must be a JSON object".to_owned()),
        Err(e) => Err(format!("parameters are not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(format: Format, kind: InputKind) -> ReadOptions {
        ReadOptions {
            format,
            column: None,
            kind,
            max_input_chars: 10,
        }
    }

    #[test]
    fn lines_are_texts_one_a_line_or_the_strings_of_a_json_array() {
        let o = options(Format::Lines, InputKind::Text);
        let records = read(b"a b\r\n\n  \nc\n0123456789x\n", &o).unwrap();
        let read_back: Vec<(usize, &str, Option<Input>)> = records
            .iter()
            .map(|r| {
                let input = r.inputs.as_ref().ok().map(|i| i[0].clone());
                (r.line, r.key.as_str(), input)
            })
            .collect();
        assert_eq!(
            read_back,
            [
                (1, "1", Some(Input::text("a b"))),
                (4, "4", Some(Input::text("c"))),
                (5, "5", None),
            ]
        );
        let records = read(br#" ["x", "line\nbreak", 3, ""]"#, &o).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(records[1].inputs, Ok(vec![Input::text("line\nbreak")]));
        assert_eq!(records[1].key, "2");
        assert!(
            records[2]
                .inputs
                .as_ref()
                .unwrap_err()
                .contains("element 3 is not a string"),
            "{:?}",
            records[2].inputs
        );
        assert!(records[3].inputs.is_err());
        assert!(read(b"[not json", &o).is_err());
    }

    #[test]
    fn hostile_json_lines_are_failed_records_and_good_ones_read() {
        let text = "\"a\"\n{\"key\": \"k\", \"input\": \"b\"}\n\n{bad\n{\"input\": \"\"}\n3\n\"0123456789x\"\n{\"inp\": 1}\n{\"input\": 2}\n";
        let records = read(text.as_bytes(), &options(Format::Jsonl, InputKind::Text)).unwrap();
        assert_eq!(records.len(), 8);
        assert_eq!((records[0].line, records[0].key.as_str()), (1, "1"));
        assert_eq!(records[0].inputs, Ok(vec![Input::text("a")]));
        assert_eq!((records[1].line, records[1].key.as_str()), (2, "k"));
        assert_eq!(records[1].inputs, Ok(vec![Input::text("b")]));
        for r in &records[2..] {
            assert!(r.inputs.is_err(), "line {} read", r.line);
        }
        assert!(
            records[4]
                .inputs
                .as_ref()
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            records[5]
                .inputs
                .as_ref()
                .unwrap_err()
                .contains("11 characters")
        );
        assert!(
            records[7]
                .inputs
                .as_ref()
                .unwrap_err()
                .contains("takes texts")
        );
    }

    #[test]
    fn csv_in_ersilia_shape_with_a_short_row_and_named_columns() {
        let text = "key,input\nk1,CCO\nk2\n,N\n";
        let records = read(text.as_bytes(), &options(Format::Csv, InputKind::Text)).unwrap();
        assert_eq!(records[0].inputs, Ok(vec![Input::text("CCO")]));
        assert_eq!(records[0].key, "k1");
        assert!(records[1].inputs.is_err());
        assert_eq!((records[2].key.as_str(), records[2].line), ("4", 4));
        let mut o = options(Format::Csv, InputKind::Text);
        assert!(read(b"a,b\n1,2\n", &o).is_err());
        o.column = Some("b".into());
        assert_eq!(
            read(b"a,b\n1,2\n", &o).unwrap()[0].inputs,
            Ok(vec![Input::text("2")])
        );
        assert_eq!(
            read(b"smiles\nC\n", &options(Format::Csv, InputKind::Text)).unwrap()[0].inputs,
            Ok(vec![Input::text("C")])
        );
    }

    #[test]
    fn openai_batch_lines_take_embeddings_requests_only() {
        let good = r#"{"custom_id":"r1","method":"POST","url":"/v1/embeddings","body":{"model":"m","input":["a","b"]}}"#;
        let chat = r#"{"custom_id":"r2","method":"POST","url":"/v1/chat/completions","body":{}}"#;
        let text = format!("{good}\n{chat}\n");
        let records = read(
            text.as_bytes(),
            &options(Format::OpenaiBatch, InputKind::Text),
        )
        .unwrap();
        assert_eq!(records[0].key, "r1");
        assert_eq!(
            records[0].inputs,
            Ok(vec![Input::text("a"), Input::text("b")])
        );
        assert!(
            records[1]
                .inputs
                .as_ref()
                .unwrap_err()
                .contains("not supported")
        );
    }

    #[test]
    fn csv_output_takes_its_columns_from_the_first_output() {
        let mut w = Writer::new(Format::Csv, "m", None);
        let r = Record {
            line: 2,
            key: "k".into(),
            inputs: Ok(vec![Input::text("x")]),
        };
        let mut out = Vec::new();
        w.output(
            &mut out,
            &r,
            &[Input::text("x")],
            &[Output::from_value(&json!({"mw": 1, "name": "a,b"}))],
        );
        w.output(
            &mut out,
            &r,
            &[Input::text("y")],
            &[Output::from_value(&json!({"name": "c"}))],
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "key,input,mw,name\nk,x,1,\"a,b\"\nk,y,,c\n"
        );
        assert_eq!(w.columns, Some(vec!["mw".to_owned(), "name".to_owned()]));
    }
}
