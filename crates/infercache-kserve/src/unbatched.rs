//! Models whose dimension 0 is not a batch (Triton's `max_batch_size: 0`): their whole
//! request travels through the per-row path as one row, seen as a batch of one.
//!
//! After parsing, a leading dimension of 1 is put on every input (no byte moves); before
//! a request goes upstream, and on the response the client gets, it is taken off again;
//! the upstream's answer gets it added so it splits into its one row. Only the JSON part
//! of a message changes: binary data, and flat or nested JSON `data`, are the same bytes
//! and values under either shape.

use serde_json::Value;

use crate::error::KserveError;
use crate::wire::Encoded;

/// Which way [`leading_dimension`] moves shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    /// `[d, ...]` becomes `[1, d, ...]`.
    Add,
    /// `[1, d, ...]` becomes `[d, ...]`.
    Remove,
}

/// Adds or removes a leading dimension of 1 on every tensor of `field` (`inputs` or
/// `outputs`) of an encoded message.
///
/// # Errors
/// A message whose JSON part does not parse, a tensor without a shape, or (for
/// [`Shift::Remove`]) one whose dimension 0 is not 1.
pub fn leading_dimension(
    encoded: Encoded,
    field: &str,
    shift: Shift,
) -> Result<Encoded, KserveError> {
    let split = encoded.header_length.unwrap_or(encoded.body.len());
    let header = encoded
        .body
        .get(..split)
        .ok_or(KserveError::HeaderLengthTooLarge {
            header: split,
            body: encoded.body.len(),
        })?;
    let mut json: Value =
        serde_json::from_slice(header).map_err(|e| KserveError::MalformedJson(e.to_string()))?;
    if let Some(tensors) = json.get_mut(field).and_then(Value::as_array_mut) {
        for (i, t) in tensors.iter_mut().enumerate() {
            let shape = t
                .get_mut("shape")
                .and_then(Value::as_array_mut)
                .ok_or_else(|| KserveError::MissingField(format!("{field}[{i}].shape")))?;
            match shift {
                Shift::Add => shape.insert(0, Value::from(1)),
                Shift::Remove if shape.first().and_then(Value::as_u64) == Some(1) => {
                    shape.remove(0);
                }
                Shift::Remove => {
                    return Err(KserveError::InvalidField {
                        field: format!("{field}[{i}].shape"),
                        message: "is not a batch of one".to_owned(),
                    });
                }
            }
        }
    }
    let mut body = serde_json::to_vec(&json).expect("a JSON value serializes");
    let header_length = encoded.header_length.map(|_| body.len());
    body.extend_from_slice(&encoded.body[split..]);
    Ok(Encoded {
        body,
        header_length,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_leading_dimension_is_added_and_removed_leaving_binary_data_alone() {
        let header =
            serde_json::to_vec(&json!({"outputs": [{"name": "O", "shape": [2, 3]}]})).unwrap();
        let mut body = header.clone();
        body.extend_from_slice(b"\x01\x02");
        let encoded = Encoded {
            body,
            header_length: Some(header.len()),
        };
        let added = leading_dimension(encoded, "outputs", Shift::Add).unwrap();
        let split = added.header_length.unwrap();
        let json: Value = serde_json::from_slice(&added.body[..split]).unwrap();
        assert_eq!(json["outputs"][0]["shape"], json!([1, 2, 3]));
        assert_eq!(&added.body[split..], b"\x01\x02");
        let removed = leading_dimension(added, "outputs", Shift::Remove).unwrap();
        let again = leading_dimension(removed, "outputs", Shift::Remove).unwrap_err();
        assert!(again.to_string().contains("batch of one"), "{again}");
    }
}
