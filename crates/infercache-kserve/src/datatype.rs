//! Tensor datatypes as the KServe v2 protocol names them.

/// A tensor element type. The discriminant is the type's code in the stored row format
/// ([`RowOutput`](super::RowOutput)); never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DataType {
    /// One byte, 0 or 1.
    Bool = 1,
    /// Unsigned 8-bit integer.
    Uint8 = 2,
    /// Unsigned 16-bit integer.
    Uint16 = 3,
    /// Unsigned 32-bit integer.
    Uint32 = 4,
    /// Unsigned 64-bit integer.
    Uint64 = 5,
    /// Signed 8-bit integer.
    Int8 = 6,
    /// Signed 16-bit integer.
    Int16 = 7,
    /// Signed 32-bit integer.
    Int32 = 8,
    /// Signed 64-bit integer.
    Int64 = 9,
    /// IEEE-754 half precision.
    Fp16 = 10,
    /// IEEE-754 single precision.
    Fp32 = 11,
    /// IEEE-754 double precision.
    Fp64 = 12,
    /// bfloat16.
    Bf16 = 13,
    /// Variable-length byte strings; on the wire each element is a 4-byte little-endian
    /// length followed by that many bytes.
    Bytes = 14,
}

impl DataType {
    /// Every datatype, in code order.
    pub const ALL: [DataType; 14] = [
        Self::Bool,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Fp16,
        Self::Fp32,
        Self::Fp64,
        Self::Bf16,
        Self::Bytes,
    ];

    /// The datatype the protocol calls `name` (`"FP32"`), if any. Case-sensitive, as
    /// Triton is.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// The datatype with stored code `code`, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|d| *d as u8 == code)
    }

    /// The protocol's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Bf16 => "BF16",
            Self::Bytes => "BYTES",
        }
    }

    /// Bytes per element; `None` for `BYTES`, whose elements vary in length.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Self::Bool | Self::Uint8 | Self::Int8 => 1,
            Self::Uint16 | Self::Int16 | Self::Fp16 | Self::Bf16 => 2,
            Self::Uint32 | Self::Int32 | Self::Fp32 => 4,
            Self::Uint64 | Self::Int64 | Self::Fp64 => 8,
            Self::Bytes => return None,
        })
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
