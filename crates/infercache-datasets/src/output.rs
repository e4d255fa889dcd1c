//! Batches as bytes for a reader elsewhere: an Arrow IPC stream or JSON lines. The
//! `datasets stream` command and the server's `/v1/datasets/{name}/batches` route write
//! through one [`BatchWriter`], so both give the same bytes for the same rows.

use std::fmt;
use std::str::FromStr;

use arrow_array::RecordBatch;
use arrow_ipc::writer::StreamWriter;

use crate::DatasetError;

/// How rows are written out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// One JSON object per row, one per line (the default).
    #[default]
    Jsonl,
    /// An Arrow IPC stream (`pyarrow.ipc.open_stream`).
    Arrow,
}

impl OutputFormat {
    /// The HTTP `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jsonl => "application/x-ndjson",
            Self::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Jsonl => "jsonl",
            Self::Arrow => "arrow",
        })
    }
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "jsonl" => Ok(Self::Jsonl),
            "arrow" => Ok(Self::Arrow),
            other => Err(format!("unknown format `{other}`; use jsonl or arrow")),
        }
    }
}

/// Turns batches into the bytes of one output, batch by batch: each call returns the
/// bytes to send next (an Arrow stream's schema message comes with its first batch), and
/// [`BatchWriter::finish`] the end of the stream.
pub struct BatchWriter {
    format: OutputFormat,
    ipc: Option<StreamWriter<Vec<u8>>>,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter")
            .field("format", &self.format)
            .field("started", &self.ipc.is_some())
            .finish()
    }
}

impl BatchWriter {
    /// A writer of `format`.
    pub fn new(format: OutputFormat) -> Self {
        Self { format, ipc: None }
    }

    /// The bytes of `batch`.
    ///
    /// # Errors
    /// Arrow cannot encode the batch, or its schema differs from the first batch's.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, DatasetError> {
        let failed = |e| DatasetError::arrow(format!("writing a batch as {}", self.format), e);
        match self.format {
            OutputFormat::Jsonl => {
                let mut out = Vec::new();
                let mut w = arrow_json::LineDelimitedWriter::new(&mut out);
                w.write_batches(&[batch]).map_err(failed)?;
                w.finish().map_err(failed)?;
                drop(w);
                Ok(out)
            }
            OutputFormat::Arrow => {
                let w = match &mut self.ipc {
                    Some(w) => w,
                    None => self.ipc.insert(
                        StreamWriter::try_new(Vec::new(), batch.schema().as_ref())
                            .map_err(failed)?,
                    ),
                };
                w.write(batch).map_err(failed)?;
                Ok(std::mem::take(w.get_mut()))
            }
        }
    }

    /// The bytes that end the output: an Arrow stream's end marker (an empty stream's
    /// schema is unknown, so an Arrow output with no batch is empty), nothing for JSON
    /// lines.
    ///
    /// # Errors
    /// Arrow cannot write the end marker.
    pub fn finish(&mut self) -> Result<Vec<u8>, DatasetError> {
        match &mut self.ipc {
            Some(w) => {
                w.finish()
                    .map_err(|e| DatasetError::arrow("ending an Arrow stream", e))?;
                Ok(std::mem::take(w.get_mut()))
            }
            None => Ok(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;

    fn batch(from: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![from, from + 1])),
                Arc::new(StringArray::from(vec![
                    format!("row {from}"),
                    format!("row {}", from + 1),
                ])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn an_arrow_output_written_in_pieces_reads_back_whole() {
        let mut w = BatchWriter::new(OutputFormat::Arrow);
        let mut bytes = w.write(&batch(0)).unwrap();
        bytes.extend(w.write(&batch(2)).unwrap());
        bytes.extend(w.finish().unwrap());
        let read: Vec<RecordBatch> =
            arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        assert_eq!(read, vec![batch(0), batch(2)]);
    }

    #[test]
    fn jsonl_is_one_object_per_row() {
        let mut w = BatchWriter::new(OutputFormat::Jsonl);
        let text = String::from_utf8(w.write(&batch(4)).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"id\":4,\"text\":\"row 4\"}\n{\"id\":5,\"text\":\"row 5\"}\n"
        );
        assert!(w.finish().unwrap().is_empty());
    }

    #[test]
    fn formats_parse_and_refuse_others() {
        assert_eq!("arrow".parse::<OutputFormat>(), Ok(OutputFormat::Arrow));
        assert_eq!("jsonl".parse::<OutputFormat>(), Ok(OutputFormat::Jsonl));
        assert!(
            "csv"
                .parse::<OutputFormat>()
                .unwrap_err()
                .contains("jsonl or arrow")
        );
    }
}
