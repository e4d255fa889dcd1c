//! The KServe v2 (Triton) HTTP inference protocol, as a codec that splits batches into
//! cacheable rows and puts them back together.
//!
//! ```text
//!  client body ─► parse_request ─► InferRequest ─► split ─► Row … Row   (key: Row::key_bytes
//!                                                              │          + parameters
//!                                   missing rows ─► build_request        + OutputSelection::key_bytes)
//!                                                              │
//!  upstream body ─► parse_response ─► InferResponse ─► split ─► RowOutput … (encode ⇄ decode: the
//!                                                              │           stored value)
//!  client response ◄─ assemble_stored(stored rows in the client's order, OutputSelection)
//! ```
//!
//! A request is read in one typed serde pass ([`parse_request`]); a body that pass does
//! not take (an unknown field, a wrong type, anything the protocol refuses) is read again
//! field by field, which names what is wrong, so the fast reading never changes an
//! answer. A response is written from the stored rows in place ([`assemble_stored`]:
//! no row decoded, the binary data copied once into the body); [`assemble_response`]
//! writes the same bytes from decoded rows.
//!
//! Both JSON tensors and Triton's binary tensor data extension are read and written
//! (<https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md>):
//! when the `Inference-Header-Content-Length` header is present, the body is that many
//! bytes of JSON followed by the raw data of every tensor whose `parameters` carry
//! `binary_data_size`, in list order.
//!
//! Every tensor's data is held in one canonical layout, the binary extension's
//! (little-endian, row-major; `BOOL` as 0/1 bytes; `BYTES` as 4-byte-length-prefixed
//! elements), whatever the wire form, so a row has the same key whether it came as JSON
//! or binary. Splitting and batching slice and concatenate that layout without copying
//! elements one by one.
//!
//! Nothing here panics on hostile input: shapes are bounded ([`MAX_DIMS`]) and their
//! products checked, sizes are compared with the body before anything is allocated from
//! them, and every failure is a [`KserveError`].
//!
//! A model whose dimension 0 is not a batch goes through the same steps as a batch of
//! one: [`leading_dimension`] adds and removes that dimension on the JSON part.

mod datatype;
mod error;
mod request;
mod response;
mod row;
mod stored;
mod tensor;
mod typed;
mod unbatched;
mod wire;

pub use datatype::DataType;
pub use error::KserveError;
pub use request::{
    BINARY_DATA, BINARY_DATA_OUTPUT, InferRequest, OutputSelection, RequestedOutput, WireFormat,
    build_request, parse_request,
};
pub use response::{InferResponse, ResponseMeta, assemble_response, parse_response};
pub use row::{ROW_FORMAT_VERSION, Row, RowOutput, RowTensor};
pub use stored::assemble_stored;
pub use tensor::{MAX_DIMS, Tensor};
pub use unbatched::{Shift, leading_dimension};
pub use wire::{Encoded, HEADER_LENGTH};

#[cfg(test)]
mod tests;
