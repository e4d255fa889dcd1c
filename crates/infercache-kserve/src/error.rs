//! What can go wrong reading, splitting, building or decoding KServe v2 messages.
//!
//! One error type for every stage; the stage decides the status. An error parsing or
//! splitting a client's request is the client's fault (400); the same error parsing or
//! splitting the upstream's response is the upstream's (502); a stored row that fails to
//! decode is a corrupt cache entry. Every message names the tensor (`inputs[1] "IDS"`),
//! the field and the numbers at fault, and contains nothing but what the message itself
//! carried.

/// Everything the KServe v2 codec rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KserveError {
    /// The `Inference-Header-Content-Length` header is not a decimal byte count.
    #[error("Inference-Header-Content-Length must be a byte count, got `{0}`")]
    HeaderLengthInvalid(String),
    /// `Inference-Header-Content-Length` is larger than the body.
    #[error("Inference-Header-Content-Length is {header} but the body has only {body} bytes")]
    HeaderLengthTooLarge {
        /// The header's value.
        header: usize,
        /// The body's length.
        body: usize,
    },
    /// The JSON part is not JSON.
    #[error("the inference header is not valid JSON: {0}")]
    MalformedJson(String),
    /// A required field is absent.
    #[error("missing required field `{0}`")]
    MissingField(String),
    /// A field has the wrong JSON type or an invalid value.
    #[error("invalid `{field}`: {message}")]
    InvalidField {
        /// The field (`inputs[0].shape`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A request without inputs.
    #[error("`inputs` must contain at least one tensor")]
    NoInputs,
    /// Two tensors with one name.
    #[error("{what} `{name}` appears more than once")]
    DuplicateName {
        /// `input` or `output`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A datatype the protocol does not define.
    #[error("{tensor}: unknown datatype `{datatype}`")]
    UnknownDatatype {
        /// The tensor.
        tensor: String,
        /// What was sent.
        datatype: String,
    },
    /// A shape that is negative, too deep or whose element count overflows.
    #[error("{tensor}: invalid shape: {reason}")]
    InvalidShape {
        /// The tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// The data holds a different number of elements than the shape says.
    #[error("{tensor}: shape {shape:?} has {expected} elements but the data has {actual}")]
    ElementCount {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Elements the shape implies.
        expected: u64,
        /// Elements sent.
        actual: u64,
    },
    /// A JSON element that is not a value of the tensor's datatype.
    #[error("{tensor}: element {index} is not a valid {datatype}: {reason}")]
    InvalidElement {
        /// The tensor.
        tensor: String,
        /// The element's flat (row-major) index.
        index: usize,
        /// The datatype.
        datatype: &'static str,
        /// Why.
        reason: String,
    },
    /// Neither `data` nor `parameters.binary_data_size`, or both.
    #[error("{tensor}: {reason}")]
    DataSource {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// `binary_data_size` disagrees with the shape and datatype.
    #[error(
        "{tensor}: binary_data_size is {actual} but shape {shape:?} of {datatype} needs {expected} bytes"
    )]
    BinarySize {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its datatype.
        datatype: &'static str,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes declared.
        actual: u64,
    },
    /// The binary part ends before a tensor's declared bytes.
    #[error(
        "{tensor}: binary_data_size is {declared} but only {available} bytes of binary data remain"
    )]
    BinaryOverrun {
        /// The tensor.
        tensor: String,
        /// Bytes declared.
        declared: u64,
        /// Bytes left in the body.
        available: usize,
    },
    /// Bytes after the last binary tensor.
    #[error(
        "{0} bytes follow the last binary tensor; binary_data_size must account for every byte"
    )]
    TrailingBinary(usize),
    /// A `BYTES` element whose 4-byte length runs past the tensor's data.
    #[error(
        "{tensor}: BYTES element {index} has a length prefix past the end of the tensor's data"
    )]
    BytesElement {
        /// The tensor.
        tensor: String,
        /// The element's flat index.
        index: usize,
    },
    /// A binary `BOOL` element that is neither 0 nor 1.
    #[error("{tensor}: BOOL element {index} is byte {value}; only 0 and 1 are booleans")]
    BoolByte {
        /// The tensor.
        tensor: String,
        /// The element's flat index.
        index: usize,
        /// The byte.
        value: u8,
    },
    /// A tensor with no dimensions cannot be split into rows.
    #[error("{tensor}: a scalar (shape []) has no batch dimension to split")]
    NoBatchDimension {
        /// The tensor.
        tensor: String,
    },
    /// Tensors disagree on the batch dimension.
    #[error("{tensor}: batch dimension (shape[0]) is {actual} but `{first}` has {expected}")]
    BatchMismatch {
        /// The tensor at fault.
        tensor: String,
        /// Its first dimension.
        actual: u64,
        /// The first tensor's name.
        first: String,
        /// The first tensor's first dimension.
        expected: u64,
    },
    /// A batch of zero rows.
    #[error("the batch dimension (shape[0]) is 0; send at least one row")]
    EmptyBatch,
    /// More rows than the caller allows.
    #[error("the batch has {rows} rows; at most {limit} are allowed per request")]
    TooManyRows {
        /// Rows sent.
        rows: u64,
        /// The limit.
        limit: usize,
    },
    /// Rows that cannot share one batched tensor (different names, datatypes or row shapes).
    #[error("row {row} does not match row 0: {reason}")]
    RowMismatch {
        /// The row at fault.
        row: usize,
        /// How it differs.
        reason: String,
    },
    /// A requested output that the rows do not hold.
    #[error("output `{0}` was requested but is not among the model's outputs")]
    MissingOutput(String),
    /// A tensor value JSON cannot carry (a non-finite float) in a JSON-only message.
    #[error("{tensor}: element {index} is not finite and cannot be sent as JSON")]
    NotJsonRepresentable {
        /// The tensor.
        tensor: String,
        /// The element's flat index.
        index: usize,
    },
    /// A stored row that does not decode.
    #[error("corrupt stored row: {0}")]
    CorruptRow(&'static str),
}

/// `inputs[i] "name"`: how messages name a tensor.
pub(crate) fn tensor_label(list: &str, index: usize, name: &str) -> String {
    format!("{list}[{index}] \"{name}\"")
}
