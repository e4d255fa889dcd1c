//! A client's response written straight from stored rows: each row read in place
//! ([`StoredRow`]), the JSON part serialized from borrowed fields and the binary data
//! copied once into the body, with no decoded [`RowOutput`](super::RowOutput) between.

use bytes::Bytes;
use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};

use super::datatype::DataType;
use super::error::KserveError;
use super::request::OutputSelection;
use super::response::ResponseMeta;
use super::row::{StoredRow, StoredTensor};
use super::tensor::{first_non_json, serialize_piece};
use super::wire::Encoded;

/// What [`assemble_response`](super::assemble_response) writes from the decoded rows,
/// written from their stored form ([`RowOutput::encode`](super::RowOutput::encode)), byte
/// for byte the same.
///
/// # Errors
/// [`KserveError::CorruptRow`] for a stored row that does not decode (checked first, for
/// every row), then those of [`assemble_response`](super::assemble_response).
pub fn assemble_stored(
    meta: ResponseMeta<'_>,
    stored: &[Bytes],
    selection: &OutputSelection,
) -> Result<Encoded, KserveError> {
    let rows = stored
        .iter()
        .map(|b| StoredRow::new(b))
        .collect::<Result<Vec<_>, _>>()?;
    let first = rows.first().ok_or(KserveError::EmptyBatch)?;
    for (r, row) in rows.iter().enumerate().skip(1) {
        same_layout(first, row, r)?;
    }
    let chosen = choose(&rows, selection)?;
    let binary_len: usize = chosen
        .iter()
        .filter(|c| c.binary)
        .map(|c| {
            rows.iter()
                .map(|r| r.tensor(c.index).data.len())
                .sum::<usize>()
        })
        .sum();
    let header_guess = 128 + meta.model_name.len() + chosen.len() * 160;
    let mut body = Vec::with_capacity(header_guess + binary_len);
    let header = Header {
        model_name: meta.model_name,
        model_version: meta.model_version,
        id: meta.id,
        outputs: Outputs {
            rows: &rows,
            chosen: &chosen,
        },
    };
    serde_json::to_writer(&mut body, &header)
        .expect("a message header serializes: string keys, finite numbers");
    let header_length = chosen.iter().any(|c| c.binary).then_some(body.len());
    for c in chosen.iter().filter(|c| c.binary) {
        rows.iter()
            .for_each(|r| body.extend_from_slice(r.tensor(c.index).data));
    }
    Ok(Encoded {
        body,
        header_length,
    })
}

/// One output to send: its index in every row, and whether it goes as binary.
struct Chosen {
    index: usize,
    binary: bool,
}

/// The selected outputs of the first row, in the selection's order (all, in stored
/// order, when it names none), each binary if asked for or if JSON cannot carry it.
fn choose(rows: &[StoredRow<'_>], selection: &OutputSelection) -> Result<Vec<Chosen>, KserveError> {
    let first = &rows[0];
    let chosen = |index: usize, t: StoredTensor<'_>| {
        let pieces = rows.iter().map(|r| r.tensor(index).data);
        Chosen {
            index,
            binary: selection.is_binary(t.name) || first_non_json(t.datatype, pieces).is_some(),
        }
    };
    match &selection.requested {
        None => Ok(first
            .tensors()
            .enumerate()
            .map(|(i, t)| chosen(i, t))
            .collect()),
        Some(list) => list
            .iter()
            .map(|o| {
                first
                    .tensors()
                    .enumerate()
                    .find(|(_, t)| t.name == o.name)
                    .map(|(i, t)| chosen(i, t))
                    .ok_or_else(|| KserveError::MissingOutput(o.name.clone()))
            })
            .collect(),
    }
}

/// Checks that `row` holds the tensors of `first` (names, datatypes, row shapes, in
/// order), with the messages of [`super::request`]'s check on decoded rows.
fn same_layout(
    first: &StoredRow<'_>,
    row: &StoredRow<'_>,
    index: usize,
) -> Result<(), KserveError> {
    let mismatch = |reason: String| KserveError::RowMismatch { row: index, reason };
    if first.len() != row.len() {
        return Err(mismatch(format!(
            "{} tensors, not {}",
            row.len(),
            first.len()
        )));
    }
    for (a, b) in first.tensors().zip(row.tensors()) {
        if !a.same_layout(&b) {
            return Err(mismatch(format!(
                "tensor `{}` {} {:?} where row 0 has `{}` {} {:?}",
                b.name,
                b.datatype,
                b.shape().collect::<Vec<_>>(),
                a.name,
                a.datatype,
                a.shape().collect::<Vec<_>>()
            )));
        }
    }
    Ok(())
}

/// The JSON part, in the field order of the decoded rows' writer.
#[derive(Serialize)]
struct Header<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Outputs<'a>,
}

struct Outputs<'a> {
    rows: &'a [StoredRow<'a>],
    chosen: &'a [Chosen],
}

impl Serialize for Outputs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.chosen.len()))?;
        for c in self.chosen {
            let t = self.rows[0].tensor(c.index);
            let size = || self.rows.iter().map(|r| r.tensor(c.index).data.len()).sum();
            seq.serialize_element(&TensorHeader {
                name: t.name,
                datatype: t.datatype.as_str(),
                shape: Batched {
                    rows: self.rows.len(),
                    tensor: t,
                },
                parameters: c.binary.then(|| BinarySize {
                    binary_data_size: size(),
                }),
                data: (!c.binary).then_some(Data {
                    rows: self.rows,
                    index: c.index,
                    datatype: t.datatype,
                }),
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct TensorHeader<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: Batched<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Data<'a>>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// `[rows] ++ the row's shape`.
struct Batched<'a> {
    rows: usize,
    tensor: StoredTensor<'a>,
}

impl Serialize for Batched<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let shape = self.tensor.shape();
        let mut seq = serializer.serialize_seq(Some(1 + shape.len()))?;
        seq.serialize_element(&(self.rows as u64))?;
        for d in shape {
            seq.serialize_element(&d)?;
        }
        seq.end()
    }
}

/// Output `index` of every row as one flat JSON array (callers checked that JSON can
/// carry it).
struct Data<'a> {
    rows: &'a [StoredRow<'a>],
    index: usize,
    datatype: DataType,
}

impl Serialize for Data<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for r in self.rows {
            serialize_piece(&mut seq, self.datatype, r.tensor(self.index).data)?;
        }
        seq.end()
    }
}
