//! The typed reading of a request: one serde pass into borrowed structs, no
//! `serde_json::Value` tree.
//!
//! It takes only the common, well-formed request: known fields only, every one of the
//! type it must have, binary tensors or JSON `data` of modest nesting. Anything else
//! (an unknown or repeated field, a wrong type, any value the protocol refuses) makes it
//! give up, and [`super::parse_request`] reads the body again field by field, which
//! names what is wrong. Both readings give the same [`InferRequest`] for every body this
//! one takes (the tests compare them), so which one ran never shows.

use std::borrow::Cow;
use std::marker::PhantomData;

use bytes::Bytes;
use http::HeaderValue;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::datatype::DataType;
use super::request::{
    BINARY_DATA, BINARY_DATA_OUTPUT, InferRequest, OutputSelection, RequestedOutput, unique,
};
use super::tensor::{Tensor, check_binary, element_count, json_to_canonical};
use super::wire::{BINARY_DATA_SIZE, Binary, split_message};

/// How deep JSON `data` may nest for this reading; deeper goes field by field, whose
/// parse counts depth from the document's root.
const MAX_DATA_DEPTH: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestWire<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Params<BinaryDataOutput>>,
    #[serde(default, borrow)]
    inputs: Option<Vec<TensorWire<'a>>>,
    #[serde(default)]
    outputs: Option<Vec<OutputWire>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorWire<'a> {
    name: String,
    #[serde(borrow)]
    datatype: Cow<'a, str>,
    shape: Vec<u64>,
    #[serde(default)]
    parameters: Option<Params<BinaryDataSize>>,
    /// Present (even as `null`) or absent: the field-by-field reading tells them apart.
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputWire {
    name: String,
    #[serde(default)]
    parameters: Option<Params<BinaryData>>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// The one parameter of a `parameters` object that the protocol itself reads.
trait Special {
    const KEY: &'static str;
}

struct BinaryDataOutput;
impl Special for BinaryDataOutput {
    const KEY: &'static str = BINARY_DATA_OUTPUT;
}

struct BinaryDataSize;
impl Special for BinaryDataSize {
    const KEY: &'static str = BINARY_DATA_SIZE;
}

struct BinaryData;
impl Special for BinaryData {
    const KEY: &'static str = BINARY_DATA;
}

/// A `parameters` object: the protocol's parameter `K::KEY` taken out, the others kept
/// (a key given twice keeps its last value, as the field-by-field reading does).
struct Params<K> {
    special: Option<Value>,
    rest: Map<String, Value>,
    kind: PhantomData<K>,
}

impl<'de, K: Special> Deserialize<'de> for Params<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K>(PhantomData<K>);
        impl<'de, K: Special> Visitor<'de> for Visit<K> {
            type Value = Params<K>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a parameters object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Params<K>, A::Error> {
                let mut params = Params {
                    special: None,
                    rest: Map::new(),
                    kind: PhantomData,
                };
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if key.0 == K::KEY {
                        params.special = Some(map.next_value()?);
                    } else {
                        params.rest.insert(key.0.into_owned(), map.next_value()?);
                    }
                }
                Ok(params)
            }
        }
        d.deserialize_map(Visit(PhantomData))
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(Visit)
    }
}

/// A protocol boolean (`binary_data_output`, `binary_data`): absent or `null` is
/// `None`; anything but a boolean gives up.
fn flag(value: Option<Value>) -> Option<Option<bool>> {
    match value {
        None | Some(Value::Null) => Some(None),
        Some(Value::Bool(b)) => Some(Some(b)),
        Some(_) => None,
    }
}

/// The request, when the typed reading takes it (see the module docs); `None` sends it
/// field by field.
pub(crate) fn parse(body: &Bytes, header_length: Option<&HeaderValue>) -> Option<InferRequest> {
    let (json, mut binary) = split_message(body, header_length).ok()?;
    let wire: RequestWire<'_> = serde_json::from_slice(json).ok()?;
    let (special, parameters) = wire
        .parameters
        .map_or((None, Map::new()), |p| (p.special, p.rest));
    let binary_data_output = flag(special)?.unwrap_or(false);
    let items = wire.inputs?;
    if items.is_empty() {
        return None;
    }
    let mut inputs = Vec::with_capacity(items.len());
    for item in items {
        inputs.push(tensor(item, &mut binary)?);
    }
    binary.finish().ok()?;
    unique("input", inputs.iter().map(|t| t.name.as_str())).ok()?;
    let requested = match wire.outputs {
        None => None,
        Some(items) if items.is_empty() => None,
        Some(items) => Some(
            items
                .into_iter()
                .map(requested_output)
                .collect::<Option<Vec<_>>>()?,
        ),
    };
    unique(
        "output",
        requested.iter().flatten().map(|o| o.name.as_str()),
    )
    .ok()?;
    Some(InferRequest {
        id: wire.id,
        parameters,
        inputs,
        outputs: OutputSelection {
            requested,
            binary_data_output,
        },
    })
}

fn tensor(wire: TensorWire<'_>, binary: &mut Binary) -> Option<Tensor> {
    let datatype = DataType::parse(&wire.datatype)?;
    element_count(&wire.shape, "").ok()?;
    let (size, parameters) = wire
        .parameters
        .map_or((None, Map::new()), |p| (p.special, p.rest));
    let data = match (wire.data, size) {
        (Some(raw), None) => {
            let value: Value = parse_json(raw)?;
            if depth(&value) > MAX_DATA_DEPTH {
                return None;
            }
            Bytes::from(json_to_canonical("", datatype, &wire.shape, &value).ok()?)
        }
        (None, Some(size)) => {
            let data = binary.take("", size.as_u64()?).ok()?;
            check_binary("", datatype, &wire.shape, &data).ok()?;
            data
        }
        _ => return None,
    };
    Some(Tensor {
        name: wire.name,
        datatype,
        shape: wire.shape,
        data,
        parameters,
    })
}

fn requested_output(wire: OutputWire) -> Option<RequestedOutput> {
    let (special, parameters) = wire
        .parameters
        .map_or((None, Map::new()), |p| (p.special, p.rest));
    Some(RequestedOutput {
        name: wire.name,
        binary_data: flag(special)?,
        parameters,
    })
}

fn parse_json<T: DeserializeOwned>(raw: &RawValue) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

/// How deeply `value` nests arrays and objects (a scalar: 0).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
