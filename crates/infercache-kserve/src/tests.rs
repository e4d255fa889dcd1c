//! The codec's tests: hand-written messages for each rule and error, and property tests
//! over random tensors of every datatype. Bodies are written here with `serde_json`
//! directly, not with the codec, so the codec is checked against an independent writer.

use bytes::Bytes;
use half::{bf16, f16};
use http::HeaderValue;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// A body with binary data: the JSON, then `blobs`, and its header-length value.
fn with_binary(header: &Value, blobs: &[&[u8]]) -> (Bytes, HeaderValue) {
    let mut body = serde_json::to_vec(header).unwrap();
    let len = body.len();
    blobs.iter().for_each(|b| body.extend_from_slice(b));
    (Bytes::from(body), HeaderValue::from(len))
}

fn json_body(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap())
}

fn parse_json(v: Value) -> Result<InferRequest, KserveError> {
    parse_request(json_body(&v), None)
}

fn f32s(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_elements(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend((item.len() as u32).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

#[test]
fn json_and_binary_requests_hold_the_same_bytes_and_keys() {
    let json = parse_json(json!({
        "id": "42",
        "inputs": [
            {"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [[1, 2.5, -0.0], [4, 5, 6]]},
            {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["ab", ""]}
        ]
    }))
    .unwrap();
    let (body, len) = with_binary(
        &json!({
            "id": "42",
            "inputs": [
                {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
                {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 10}}
            ]
        }),
        &[
            &f32s(&[1.0, 2.5, -0.0, 4.0, 5.0, 6.0]),
            &bytes_elements(&[b"ab", b""]),
        ],
    );
    let binary = parse_request(body, Some(&len)).unwrap();
    assert_eq!(json, binary);
    let (a, b) = (json.split(8).unwrap(), binary.split(8).unwrap());
    assert_eq!(a.len(), 2);
    assert_eq!(a, b);
    assert_eq!(a[0].key_bytes(), b[0].key_bytes());
    assert_ne!(a[0].key_bytes(), a[1].key_bytes());
    // Rows hold inputs in name order, each with its row shape.
    assert_eq!(a[1].inputs[0].name, "s");
    assert_eq!(a[1].inputs[1].shape, vec![3]);
    assert_eq!(&a[1].inputs[1].data[..], &f32s(&[4.0, 5.0, 6.0])[..]);
    assert_eq!(&a[0].inputs[0].data[..], &bytes_elements(&[b"ab"])[..]);
}

#[test]
fn presentation_is_kept_apart_from_parameters() {
    let req = parse_json(json!({
        "parameters": {"binary_data_output": true, "temperature": 0.5},
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}],
        "outputs": [
            {"name": "b", "parameters": {"binary_data": false, "classification": 2}},
            {"name": "a"}
        ]
    }))
    .unwrap();
    assert_eq!(
        req.parameters,
        json!({"temperature": 0.5}).as_object().unwrap().clone()
    );
    assert!(req.outputs.binary_data_output);
    assert!(!req.outputs.is_binary("b"));
    assert!(req.outputs.is_binary("a"));
    assert_eq!(
        String::from_utf8(req.outputs.key_bytes()).unwrap(),
        r#"[["a",{}],["b",{"classification":2}]]"#
    );
    let all = parse_json(
        json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}]}),
    )
    .unwrap();
    assert_eq!(all.outputs.key_bytes(), b"*");
}

#[test]
fn input_parameters_are_part_of_the_row_key() {
    let with = |p: Value| {
        parse_json(json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1], "parameters": p}]}))
            .unwrap()
            .split(1)
            .unwrap()[0]
            .key_bytes()
    };
    assert_eq!(with(json!({"a": 1, "b": 2})), with(json!({"b": 2, "a": 1})));
    // An upstream can tell 2 from 2.0: they are other rows.
    assert_ne!(
        with(json!({"a": 1, "b": 2})),
        with(json!({"b": 2.0, "a": 1}))
    );
    assert_ne!(with(json!({"a": 1})), with(json!({"a": 2})));
    assert_ne!(with(json!({})), with(json!({"a": 1})));
}

/// Every malformed request gets its own error.
#[test]
fn malformed_requests_get_specific_errors() {
    let input = |t: Value| json!({"inputs": [t]});
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "expected a JSON object"),
        (json!({}), "missing required field `inputs`"),
        (json!({"inputs": []}), "at least one tensor"),
        (json!({"inputs": {}}), "invalid `inputs`: expected an array"),
        (
            input(json!({"shape": [1], "datatype": "FP32", "data": [1]})),
            "`inputs[0].name`",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "FP8", "data": [1]})),
            "unknown datatype `FP8`",
        ),
        (
            input(json!({"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]})),
            "dimension -1 is not a non-negative integer",
        ),
        (
            input(
                json!({"name": "x", "shape": [4294967296u64, 4294967296u64], "datatype": "FP32", "data": [1]}),
            ),
            "overflows 64 bits",
        ),
        (
            input(json!({"name": "x", "shape": vec![1; 33], "datatype": "FP32", "data": [1]})),
            "33 dimensions",
        ),
        (
            input(
                json!({"name": "x", "shape": [1099511627776u64], "datatype": "FP32", "data": [1]}),
            ),
            "has 1099511627776 elements but the data has 1",
        ),
        (
            input(json!({"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 1.5]})),
            "element 1 is not a valid INT32",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]})),
            "300 is larger than 255",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "INT8", "data": [-129]})),
            "outside -128..=127",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "FP32", "data": ["1"]})),
            "expected a number",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "FP32", "data": [1e39]})),
            "out of range",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "FP16", "data": [70000]})),
            "out of range",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "BOOL", "data": [1]})),
            "expected true or false",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "BYTES", "data": [1]})),
            "expected a string",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "FP32", "data": 1})),
            "`inputs[0] \"x\".data`: expected an array",
        ),
        (
            input(json!({"name": "x", "shape": [1], "datatype": "FP32"})),
            "neither `data` nor",
        ),
        (
            input(
                json!({"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": {"binary_data_size": 4}}),
            ),
            "both `data` and",
        ),
        (
            input(
                json!({"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": -4}}),
            ),
            "expected a non-negative integer",
        ),
        (
            input(
                json!({"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}),
            ),
            "only 0 bytes of binary data remain",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}, {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            "input `x` appears more than once",
        ),
        (
            json!({"id": 7, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            "invalid `id`",
        ),
        (
            json!({"parameters": {"binary_data_output": "yes"}, "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            "parameters.binary_data_output",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": [{"name": "y"}, {"name": "y"}]}),
            "output `y` appears more than once",
        ),
        (
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}),
            "outputs[0].parameters.binary_data",
        ),
    ];
    for (body, expected) in cases {
        let err = parse_json(body.clone())
            .expect_err(&body.to_string())
            .to_string();
        assert!(
            err.contains(expected),
            "{body}: got `{err}`, expected `{expected}`"
        );
    }
}

#[test]
fn malformed_binary_requests_get_specific_errors() {
    let header = |size: i64, dtype: &str, shape: Value| json!({"inputs": [{"name": "x", "shape": shape, "datatype": dtype, "parameters": {"binary_data_size": size}}]});
    let check = |body: Bytes, len: HeaderValue, expected: &str| {
        let err = parse_request(body, Some(&len)).unwrap_err().to_string();
        assert!(err.contains(expected), "got `{err}`, expected `{expected}`");
    };
    let (body, len) = with_binary(&header(8, "FP32", json!([1])), &[&[0; 8]]);
    check(
        body,
        len,
        "binary_data_size is 8 but shape [1] of FP32 needs 4 bytes",
    );
    let (body, len) = with_binary(&header(4, "FP32", json!([1])), &[&[0; 6]]);
    check(body, len, "2 bytes follow the last binary tensor");
    let (body, _) = with_binary(&header(4, "FP32", json!([1])), &[&[0; 4]]);
    check(
        body.clone(),
        HeaderValue::from(body.len() + 1),
        "but the body has only",
    );
    check(
        body.clone(),
        HeaderValue::from_static("12x"),
        "must be a byte count, got `12x`",
    );
    check(body, HeaderValue::from_static("-1"), "must be a byte count");
    let (body, len) = with_binary(&header(2, "BOOL", json!([2])), &[&[1, 2]]);
    check(body, len, "BOOL element 1 is byte 2");
    let (body, len) = with_binary(
        &header(6, "BYTES", json!([1])),
        &[&[9, 0, 0, 0, b'a', b'b']],
    );
    check(
        body,
        len,
        "BYTES element 0 has a length prefix past the end",
    );
    let (body, len) = with_binary(&header(5, "BYTES", json!([2])), &[&bytes_elements(&[b"a"])]);
    check(body, len, "shape [2] has 2 elements but the data has 1");
    let (body, len) = with_binary(&header(i64::MAX, "UINT8", json!([1])), &[&[0]]);
    check(body, len, "binary_data_size is 9223372036854775807 but");
    // A header length that cuts the JSON.
    let (body, _) = with_binary(&header(1, "UINT8", json!([1])), &[&[0]]);
    check(body, HeaderValue::from(5), "not valid JSON");
}

#[test]
fn splitting_checks_the_batch_dimension() {
    let two = |a: Value, b: Value| {
        parse_json(json!({"inputs": [
            {"name": "a", "shape": a, "datatype": "UINT8", "data": []},
            {"name": "b", "shape": b, "datatype": "UINT8", "data": []}
        ]}))
        .unwrap()
    };
    let err = two(json!([2, 0]), json!([3, 0])).split(10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "inputs[1] \"b\": batch dimension (shape[0]) is 3 but `a` has 2"
    );
    let err = two(json!([0]), json!([0])).split(10).unwrap_err();
    assert_eq!(err, KserveError::EmptyBatch);
    let scalar = parse_json(
        json!({"inputs": [{"name": "a", "shape": [], "datatype": "UINT8", "data": [1]}]}),
    )
    .unwrap();
    let err = scalar.split(10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "inputs[0] \"a\": a scalar (shape []) has no batch dimension to split"
    );
    // A huge batch of empty rows is refused before anything is allocated for it.
    let err = two(
        json!([1_000_000_000_000u64, 0]),
        json!([1_000_000_000_000u64, 0]),
    )
    .split(64)
    .unwrap_err();
    assert_eq!(
        err,
        KserveError::TooManyRows {
            rows: 1_000_000_000_000,
            limit: 64
        }
    );
    let rows = two(json!([3, 0]), json!([3, 0])).split(3).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows[2]
            .inputs
            .iter()
            .all(|t| t.data.is_empty() && t.shape == vec![0])
    );
}

#[test]
fn the_upstream_request_carries_the_missing_rows_as_binary() {
    let req = parse_json(json!({
        "parameters": {"binary_data_output": false, "p": 1},
        "inputs": [{"name": "x", "shape": [3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6], "parameters": {"q": true}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": false, "classification": 1}}]
    }))
    .unwrap();
    let rows = req.split(10).unwrap();
    let encoded = build_request(
        &[&rows[2], &rows[0]],
        &req.outputs,
        &req.parameters,
        WireFormat::Binary,
    )
    .unwrap();
    let len = encoded.header_length.unwrap();
    assert_eq!(encoded.content_type(), "application/octet-stream");
    let header: Value = serde_json::from_slice(&encoded.body[..len]).unwrap();
    assert_eq!(
        header,
        json!({
            "parameters": {"p": 1},
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "parameters": {"q": true, "binary_data_size": 16}}],
            "outputs": [{"name": "y", "parameters": {"classification": 1, "binary_data": true}}]
        })
    );
    assert_eq!(&encoded.body[len..], &f32s(&[5.0, 6.0, 1.0, 2.0])[..]);

    let encoded =
        build_request(&[&rows[1]], &req.outputs, &req.parameters, WireFormat::Json).unwrap();
    assert_eq!(encoded.header_length, None);
    let body: Value = serde_json::from_slice(&encoded.body).unwrap();
    assert_eq!(body["inputs"][0]["data"], json!([3.0, 4.0]));
    assert_eq!(
        body["outputs"][0]["parameters"],
        json!({"classification": 1})
    );

    // With every output requested, binary output is asked for with binary_data_output.
    let all = OutputSelection::default();
    let encoded =
        build_request(&[&rows[1]], &all, &Default::default(), WireFormat::Binary).unwrap();
    let header: Value =
        serde_json::from_slice(&encoded.body[..encoded.header_length.unwrap()]).unwrap();
    assert_eq!(header["parameters"], json!({"binary_data_output": true}));
    assert_eq!(header.get("outputs"), None);
}

#[test]
fn rows_that_do_not_batch_together_are_refused() {
    let one = |shape: Value, data: Value| {
        parse_json(
            json!({"inputs": [{"name": "x", "shape": shape, "datatype": "INT32", "data": data}]}),
        )
        .unwrap()
        .split(4)
        .unwrap()
    };
    let (a, b) = (
        one(json!([1, 2]), json!([1, 2])),
        one(json!([1, 3]), json!([1, 2, 3])),
    );
    let err = build_request(
        &[&a[0], &b[0]],
        &OutputSelection::default(),
        &Default::default(),
        WireFormat::Binary,
    )
    .unwrap_err();
    assert!(
        matches!(err, KserveError::RowMismatch { row: 1, .. }),
        "{err}"
    );
    assert_eq!(
        build_request(
            &[],
            &OutputSelection::default(),
            &Default::default(),
            WireFormat::Binary
        ),
        Err(KserveError::EmptyBatch)
    );
}

#[test]
fn json_cannot_carry_non_finite_floats_upstream() {
    let (body, len) = with_binary(
        &json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}]}),
        &[&f32s(&[1.0, f32::NAN])],
    );
    let req = parse_request(body, Some(&len)).unwrap();
    let rows = req.split(1).unwrap();
    let err =
        build_request(&[&rows[0]], &req.outputs, &req.parameters, WireFormat::Json).unwrap_err();
    assert_eq!(
        err,
        KserveError::NotJsonRepresentable {
            tensor: "inputs[0] \"x\"".to_owned(),
            index: 1
        }
    );
}

fn upstream_response() -> InferResponse {
    let (body, len) = with_binary(
        &json!({
            "model_name": "m", "model_version": "3",
            "outputs": [
                {"name": "y", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
                {"name": "n", "shape": [2], "datatype": "INT64", "data": [7, -8]},
                {"name": "s", "shape": [2, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 12}}
            ]
        }),
        &[
            &f32s(&[0.5, f32::INFINITY, 2.0, 3.0]),
            &bytes_elements(&[b"xyz", &[0xff]]),
        ],
    );
    parse_response(body, Some(&len)).unwrap()
}

#[test]
fn responses_split_into_rows_that_survive_storage() {
    let response = upstream_response();
    assert_eq!(response.model_version.as_deref(), Some("3"));
    let rows = response.split(2).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[1].outputs[1].data,
        Bytes::from((-8i64).to_le_bytes().to_vec())
    );
    assert_eq!(
        rows[1].outputs[2].data,
        Bytes::from(bytes_elements(&[&[0xff]]))
    );
    for row in &rows {
        let stored = Bytes::from(row.encode());
        assert_eq!(stored[0], ROW_FORMAT_VERSION);
        assert_eq!(&RowOutput::decode(&stored).unwrap(), row);
    }
    let empty = parse_response(
        json_body(&json!({"outputs": [{"name": "e", "shape": [0, 4294967296u64, 4294967296u64], "datatype": "FP32", "data": []}]})),
        None,
    )
    .unwrap();
    assert_eq!(empty.split(0), Err(KserveError::EmptyBatch));
    let err = response.split(3).unwrap_err();
    assert_eq!(
        err.to_string(),
        "outputs[0] \"y\": batch dimension (shape[0]) is 2 but `rows sent` has 3"
    );
}

#[test]
fn corrupt_stored_rows_are_refused() {
    let row = &upstream_response().split(2).unwrap()[0];
    let stored = row.encode();
    let decode = |b: Vec<u8>| RowOutput::decode(&Bytes::from(b));
    for cut in 0..stored.len() {
        assert!(
            decode(stored[..cut].to_vec()).is_err(),
            "truncated at {cut}"
        );
    }
    let mut longer = stored.clone();
    longer.push(0);
    assert_eq!(
        decode(longer),
        Err(KserveError::CorruptRow("trailing bytes"))
    );
    let mut version = stored.clone();
    version[0] = 2;
    assert_eq!(
        decode(version),
        Err(KserveError::CorruptRow("unknown format version"))
    );
    // The first output's datatype code (after version, count, name length and "y").
    let mut dtype = stored.clone();
    dtype[1 + 4 + 2 + 1] = 99;
    assert_eq!(
        decode(dtype),
        Err(KserveError::CorruptRow("unknown datatype code"))
    );
    let mut dim = stored;
    dim[1 + 4 + 2 + 1 + 2] = 3; // row shape [2] becomes [3]: 12 bytes needed, 8 held
    assert_eq!(
        decode(dim),
        Err(KserveError::CorruptRow(
            "data disagrees with datatype and shape"
        ))
    );
}

#[test]
fn reassembly_follows_the_selection() {
    let rows = upstream_response().split(2).unwrap();
    let meta = ResponseMeta {
        model_name: "m",
        model_version: Some("1"),
        id: Some("r"),
    };
    let selection = parse_json(json!({
        "inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [1]}],
        "outputs": [{"name": "n"}, {"name": "y"}]
    }))
    .unwrap()
    .outputs;
    let reversed = [rows[1].clone(), rows[0].clone()];
    let encoded = assemble_response(meta, &reversed, &selection).unwrap();
    let stored = [
        Bytes::from(reversed[0].encode()),
        Bytes::from(reversed[1].encode()),
    ];
    assert_eq!(assemble_stored(meta, &stored, &selection).unwrap(), encoded);
    // `y` holds an infinity, which JSON cannot carry: it goes binary; `n` stays JSON.
    let len = encoded.header_length.unwrap();
    let header: Value = serde_json::from_slice(&encoded.body[..len]).unwrap();
    assert_eq!(
        header,
        json!({
            "model_name": "m", "model_version": "1", "id": "r",
            "outputs": [
                {"name": "n", "datatype": "INT64", "shape": [2], "data": [-8, 7]},
                {"name": "y", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}
            ]
        })
    );
    assert_eq!(
        &encoded.body[len..],
        &f32s(&[2.0, 3.0, 0.5, f32::INFINITY])[..]
    );

    let missing = OutputSelection {
        requested: Some(vec![RequestedOutput {
            name: "zz".into(),
            binary_data: None,
            parameters: Default::default(),
        }]),
        binary_data_output: false,
    };
    assert_eq!(
        assemble_response(meta, &rows, &missing),
        Err(KserveError::MissingOutput("zz".into()))
    );
    assert_eq!(
        assemble_response(meta, &[], &missing),
        Err(KserveError::EmptyBatch)
    );
    let stored: Vec<Bytes> = rows.iter().map(|r| Bytes::from(r.encode())).collect();
    assert_eq!(
        assemble_stored(meta, &stored, &missing),
        Err(KserveError::MissingOutput("zz".into()))
    );
    assert_eq!(
        assemble_stored(meta, &[], &missing),
        Err(KserveError::EmptyBatch)
    );
    let mut corrupt = stored.clone();
    corrupt[1] = corrupt[1].slice(..corrupt[1].len() - 1);
    assert_eq!(
        assemble_stored(meta, &corrupt, &selection),
        Err(KserveError::CorruptRow("truncated"))
    );
    let other = RowOutput {
        outputs: rows[0].outputs[..1].to_vec(),
    };
    let mixed = [stored[0].clone(), Bytes::from(other.encode())];
    let all = OutputSelection::default();
    assert_eq!(
        assemble_stored(meta, &mixed, &all),
        assemble_response(meta, &[rows[0].clone(), other], &all)
    );
    assert!(matches!(
        assemble_stored(meta, &mixed, &all),
        Err(KserveError::RowMismatch { row: 1, .. })
    ));
}

// ---- property tests ----

/// A generated tensor: its header fields and every element both as JSON and as canonical
/// bytes, written independently of the codec.
#[derive(Debug, Clone)]
struct Gen {
    name: String,
    datatype: DataType,
    shape: Vec<u64>,
    json: Vec<Value>,
    elements: Vec<Vec<u8>>,
}

impl Gen {
    fn bytes(&self) -> Vec<u8> {
        self.elements.concat()
    }

    /// Row `r`'s canonical bytes, computed directly from the elements.
    fn row(&self, r: usize) -> Vec<u8> {
        let per_row = self.shape[1..].iter().product::<u64>() as usize;
        self.elements[r * per_row..(r + 1) * per_row].concat()
    }

    /// The JSON data, flat or nested by the shape.
    fn data(&self, nested: bool) -> Value {
        if nested {
            nest(&self.json, &self.shape)
        } else {
            Value::Array(self.json.clone())
        }
    }
}

fn nest(flat: &[Value], shape: &[u64]) -> Value {
    if shape.len() <= 1 {
        return Value::Array(flat.to_vec());
    }
    let chunk = shape[1..].iter().product::<u64>() as usize;
    if chunk == 0 {
        return Value::Array(vec![nest(&[], &shape[1..]); shape[0] as usize]);
    }
    Value::Array(flat.chunks(chunk).map(|c| nest(c, &shape[1..])).collect())
}

/// One element of `datatype`: its JSON form and its canonical bytes. Floats are finite
/// (JSON has no other kind) and exact in their type.
fn element(datatype: DataType) -> BoxedStrategy<(Value, Vec<u8>)> {
    match datatype {
        DataType::Bool => any::<bool>()
            .prop_map(|b| (json!(b), vec![u8::from(b)]))
            .boxed(),
        DataType::Uint8 => any::<u8>()
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Uint16 => any::<u16>()
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Uint32 => any::<u32>()
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Uint64 => any::<u64>()
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Int8 => any::<i8>()
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Int16 => any::<i16>()
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Int32 => any::<i32>()
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Int64 => any::<i64>()
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Fp16 => any::<u16>()
            .prop_map(f16::from_bits)
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| (json!(v.to_f64()), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Bf16 => any::<u16>()
            .prop_map(bf16::from_bits)
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| (json!(v.to_f64()), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Fp32 => any::<f32>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| (json!(f64::from(v)), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Fp64 => any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(|v| (json!(v), v.to_le_bytes().to_vec()))
            .boxed(),
        DataType::Bytes => ".{0,5}"
            .prop_map(|s: String| {
                let mut b = (s.len() as u32).to_le_bytes().to_vec();
                b.extend(s.as_bytes());
                (json!(s), b)
            })
            .boxed(),
    }
}

/// A tensor named `name` with `rows` rows of a random datatype and row shape.
fn tensor(name: &'static str, rows: u64) -> impl Strategy<Value = Gen> {
    (
        proptest::sample::select(DataType::ALL.to_vec()),
        prop::collection::vec(0u64..4, 0..3),
    )
        .prop_flat_map(move |(datatype, row_shape)| {
            let shape: Vec<u64> = std::iter::once(rows).chain(row_shape).collect();
            let count = shape.iter().product::<u64>() as usize;
            prop::collection::vec(element(datatype), count).prop_map(move |elems| Gen {
                name: name.to_owned(),
                datatype,
                shape: shape.clone(),
                json: elems.iter().map(|e| e.0.clone()).collect(),
                elements: elems.into_iter().map(|e| e.1).collect(),
            })
        })
}

/// 1 to 3 tensors (names not in sorted order) sharing 1 to 5 rows.
fn tensors(names: [&'static str; 3]) -> impl Strategy<Value = Vec<Gen>> {
    (1u64..6, 1usize..4).prop_flat_map(move |(rows, n)| {
        names[..n]
            .iter()
            .map(|name| tensor(name, rows))
            .collect::<Vec<_>>()
    })
}

/// A message body holding `gens` under `list`, each tensor binary where `binary` says so,
/// JSON data nested or flat.
fn body(
    list: &str,
    gens: &[Gen],
    binary: &[bool],
    nested: bool,
    extra: Value,
) -> (Bytes, Option<HeaderValue>) {
    let mut blobs = Vec::new();
    let items: Vec<Value> = gens
        .iter()
        .zip(binary)
        .map(|(g, &bin)| {
            if bin {
                blobs.push(g.bytes());
                json!({"name": g.name, "datatype": g.datatype.as_str(), "shape": g.shape, "parameters": {"binary_data_size": g.bytes().len()}})
            } else {
                json!({"name": g.name, "datatype": g.datatype.as_str(), "shape": g.shape, "data": g.data(nested)})
            }
        })
        .collect();
    let mut header = extra;
    header[list] = Value::Array(items);
    if binary.iter().any(|b| *b) {
        let (body, len) = with_binary(
            &header,
            &blobs.iter().map(Vec::as_slice).collect::<Vec<_>>(),
        );
        (body, Some(len))
    } else {
        (json_body(&header), None)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The same tensors sent as JSON (flat or nested) or binary, or any mix, give the same
    /// rows and row keys, and each row holds exactly its slice of the elements.
    #[test]
    fn json_and_binary_give_identical_row_keys(gens in tensors(["zeta", "alpha", "mid"]), mask in prop::collection::vec(any::<bool>(), 3), nested: bool) {
        let (json, _) = body("inputs", &gens, &[false; 3], nested, json!({}));
        let (bin, len) = body("inputs", &gens, &mask, !nested, json!({}));
        for (body, len) in [(&json, None), (&bin, len.as_ref())] {
            let typed = crate::typed::parse(body, len);
            prop_assert!(typed.is_some(), "the typed reading takes a common body");
            prop_assert_eq!(typed, Some(request::parse_fields(body.clone(), len).unwrap()));
        }
        let a = parse_request(json, None).unwrap().split(16).unwrap();
        let b = parse_request(bin, len.as_ref()).unwrap().split(16).unwrap();
        prop_assert_eq!(a.len() as u64, gens[0].shape[0]);
        for (r, (x, y)) in a.iter().zip(&b).enumerate() {
            prop_assert_eq!(x.key_bytes(), y.key_bytes());
            let mut sorted: Vec<&Gen> = gens.iter().collect();
            sorted.sort_by_key(|g| g.name.clone());
            for (t, g) in x.inputs.iter().zip(sorted) {
                prop_assert_eq!(&t.name, &g.name);
                prop_assert_eq!(&t.shape[..], &g.shape[1..]);
                prop_assert_eq!(&t.data[..], &g.row(r)[..]);
            }
        }
    }

    /// Rows batched into an upstream request (binary or JSON) parse back into the same rows.
    #[test]
    fn split_build_split_roundtrips(gens in tensors(["b", "a", "c"]), pick in prop::collection::vec(any::<prop::sample::Index>(), 1..6), json_wire: bool) {
        let (bin, len) = body("inputs", &gens, &[true; 3], false, json!({"parameters": {"k": 1}}));
        let request = parse_request(bin, len.as_ref()).unwrap();
        let rows = request.split(16).unwrap();
        let chosen: Vec<&Row> = pick.iter().map(|i| &rows[i.index(rows.len())]).collect();
        let format = if json_wire { WireFormat::Json } else { WireFormat::Binary };
        let encoded = build_request(&chosen, &request.outputs, &request.parameters, format).unwrap();
        let len = encoded.header_length.map(HeaderValue::from);
        let again = parse_request(Bytes::from(encoded.body), len.as_ref()).unwrap();
        prop_assert_eq!(&again.parameters, &request.parameters);
        let back = again.split(16).unwrap();
        prop_assert_eq!(back.len(), chosen.len());
        for (x, y) in back.iter().zip(&chosen) {
            prop_assert_eq!(x, *y);
        }
    }

    /// A one-row request (split without per-row ranges) splits into the row the general
    /// path makes of each tensor, inputs and their parameters in name order.
    #[test]
    fn a_single_row_splits_as_the_general_path_does(gens in (1usize..4).prop_flat_map(|n| {
        ["b", "a", "c"][..n].iter().map(|name| tensor(name, 1)).collect::<Vec<_>>()
    })) {
        let (bin, len) = body("inputs", &gens, &[true; 3], false, json!({}));
        let request = parse_request(bin, len.as_ref()).unwrap();
        let rows = request.split(16).unwrap();
        prop_assert_eq!(rows.len(), 1);
        let mut order: Vec<&tensor::Tensor> = request.inputs.iter().collect();
        order.sort_by(|a, b| a.name.cmp(&b.name));
        let general: Vec<RowTensor> = order
            .iter()
            .map(|t| row::split_tensor(t, &t.name).unwrap().remove(0))
            .collect();
        prop_assert_eq!(&rows[0].inputs, &general);
        let parameters: Vec<_> = order.iter().map(|t| t.parameters.clone()).collect();
        prop_assert_eq!(&rows[0].parameters, &parameters);
    }

    /// Upstream outputs split into rows, stored, decoded and reassembled in another order
    /// equal the outputs computed directly in that order, as JSON or binary.
    #[test]
    fn reassembly_equals_direct_computation(
        gens in tensors(["OUT_B", "OUT_A", "OUT_C"]),
        mask in prop::collection::vec(any::<bool>(), 3),
        order in prop::collection::vec(any::<u64>(), 8),
        binary_out: bool,
    ) {
        let rows = gens[0].shape[0] as usize;
        let (body_bytes, len) = body("outputs", &gens, &mask, true, json!({"model_name": "up"}));
        let response = parse_response(body_bytes, len.as_ref()).unwrap();
        let stored: Vec<Bytes> = response.split(rows).unwrap().iter().map(|r| Bytes::from(r.encode())).collect();
        let perm: Vec<usize> = {
            let mut p: Vec<usize> = (0..rows).collect();
            p.sort_by_key(|&i| order[i]);
            p
        };
        let decoded: Vec<RowOutput> = perm.iter().map(|&i| RowOutput::decode(&stored[i]).unwrap()).collect();
        let selection = OutputSelection { requested: None, binary_data_output: binary_out };
        let meta = ResponseMeta { model_name: "m", model_version: None, id: Some("x") };
        let encoded = assemble_response(meta, &decoded, &selection).unwrap();
        let ordered: Vec<Bytes> = perm.iter().map(|&i| stored[i].clone()).collect();
        prop_assert_eq!(&assemble_stored(meta, &ordered, &selection).unwrap(), &encoded);
        let len = encoded.header_length.map(HeaderValue::from);
        let parsed = parse_response(Bytes::from(encoded.body), len.as_ref()).unwrap();
        prop_assert_eq!(parsed.id.as_deref(), Some("x"));
        prop_assert_eq!(parsed.outputs.len(), gens.len());
        for (t, g) in parsed.outputs.iter().zip(&gens) {
            prop_assert_eq!(&t.name, &g.name);
            prop_assert_eq!(t.datatype, g.datatype);
            prop_assert_eq!(&t.shape, &g.shape);
            let direct: Vec<u8> = perm.iter().flat_map(|&r| g.row(r)).collect();
            prop_assert_eq!(&t.data[..], &direct[..]);
        }
    }

    /// Any body and header length is parsed or refused, never a panic.
    #[test]
    fn hostile_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), len in prop::option::of(0usize..300)) {
        let len = len.map(HeaderValue::from);
        let _ = parse_request(Bytes::from(body.clone()), len.as_ref()).map(|r| r.split(8));
        let _ = parse_response(Bytes::from(body.clone()), len.as_ref()).map(|r| r.split(2));
        let _ = RowOutput::decode(&Bytes::from(body));
    }

    /// Valid messages with a byte changed or a wrong header length are parsed or refused,
    /// never a panic; so are stored rows with a byte changed.
    #[test]
    fn mutated_messages_never_panic(gens in tensors(["x", "y", "z"]), mask in prop::collection::vec(any::<bool>(), 3), at: prop::sample::Index, byte: u8, delta in -3i64..4) {
        let (body_bytes, len) = body("inputs", &gens, &mask, false, json!({}));
        let mut mutated = body_bytes.to_vec();
        let i = at.index(mutated.len());
        mutated[i] = byte;
        let header_len = len.as_ref().map(|l| l.to_str().unwrap().parse::<i64>().unwrap() + delta);
        let header = header_len.map(|n| HeaderValue::from_str(&n.to_string()).unwrap());
        if let Ok(request) = parse_request(Bytes::from(mutated), header.as_ref()) {
            let _ = request.split(8);
        }
        let rows = parse_request(body_bytes.clone(), len.as_ref()).unwrap().split(8).unwrap();
        let out = RowOutput { outputs: rows[0].inputs.clone() };
        let mut stored = out.encode();
        let i = at.index(stored.len());
        stored[i] = byte;
        let _ = RowOutput::decode(&Bytes::from(stored));
    }
}

/// Request bodies as tritonclient 2.73.0 writes them (`testdata/generate.py`), binary and
/// JSON, give the same rows.
#[test]
fn tritonclient_request_bodies_parse_to_the_same_rows() {
    let binary = parse_request(
        Bytes::from_static(include_bytes!("testdata/binary.body")),
        Some(&HeaderValue::from_static(include_str!(
            "testdata/binary.len"
        ))),
    )
    .unwrap();
    let json = parse_request(
        Bytes::from_static(include_bytes!("testdata/json.body")),
        None,
    )
    .unwrap();
    assert_eq!(binary.id.as_deref(), Some("7"));
    assert_eq!(
        binary.parameters,
        json!({"p": 1}).as_object().unwrap().clone()
    );
    assert!(binary.outputs.is_binary("OUT"));
    assert!(!json.outputs.is_binary("OUT"));
    assert_eq!(binary.outputs.key_bytes(), json.outputs.key_bytes());
    let (a, b) = (binary.split(2).unwrap(), json.split(2).unwrap());
    assert_eq!(a, b);
    let names: Vec<&str> = a[1].inputs.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["B", "H", "I", "S", "X"]);
    assert_eq!(&a[1].inputs[0].data[..], &[0]);
    assert_eq!(&a[1].inputs[1].data[..], &f16::from_f32(-2.0).to_le_bytes());
    assert_eq!(
        &a[0].inputs[2].data[..],
        &[(-1i64).to_le_bytes(), (1i64 << 40).to_le_bytes()].concat()[..]
    );
    assert_eq!(
        &a[1].inputs[3].data[..],
        &bytes_elements(&["é".as_bytes()])[..]
    );
    assert_eq!(&a[1].inputs[4].data[..], &f32s(&[0.75, 1.0, 1.25])[..]);
}

#[test]
fn an_empty_output_list_asks_for_every_output_like_none() {
    let input = json!([{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}]);
    let empty = parse_request(json_body(&json!({"inputs": input, "outputs": []})), None).unwrap();
    let absent = parse_request(json_body(&json!({"inputs": input})), None).unwrap();
    assert!(empty.outputs.requested.is_none());
    assert_eq!(empty.outputs.key_bytes(), absent.outputs.key_bytes());
}

/// Bodies the typed reading gives up on (unknown or repeated fields, `null` where the
/// protocol reads presence, values of the wrong type, nesting past its bound) are read
/// field by field: the answer, value or error, is that reading's.
#[test]
fn the_typed_reading_agrees_with_the_field_by_field_one() {
    let data = f32s(&[1.0, 2.0]);
    let binary = |tensor: Value, extra: Value| {
        let mut header = json!({"inputs": [tensor]});
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        with_binary(&header, &[&data])
    };
    let x = json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}});
    let mut deep = json!([1.0, 2.0]);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let cases = [
        binary(x.clone(), json!({})),
        binary(
            x.clone(),
            json!({"id": "7", "parameters": {"binary_data_output": true, "k": [1, {"b": 2}]}}),
        ),
        binary(
            x.clone(),
            json!({"outputs": [{"name": "o", "parameters": {"binary_data": false, "classification": 2}}]}),
        ),
        binary(x.clone(), json!({"outputs": []})),
        binary(
            x.clone(),
            json!({"outputs": null, "id": null, "parameters": null}),
        ),
        binary(x.clone(), json!({"unknown": 1})),
        binary(
            x.clone(),
            json!({"parameters": {"binary_data_output": "yes"}}),
        ),
        binary(
            x.clone(),
            json!({"outputs": [{"name": "o", "parameters": {"binary_data": 1}}]}),
        ),
        binary(
            x.clone(),
            json!({"outputs": [{"name": "o"}, {"name": "o"}]}),
        ),
        binary(x.clone(), json!({"outputs": [{"name": "o", "extra": 1}]})),
        binary(
            json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}, "data": null}),
            json!({}),
        ),
        binary(
            json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": null}}),
            json!({}),
        ),
        binary(
            json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 4}}),
            json!({}),
        ),
        binary(
            json!({"name": "x", "datatype": "FP32", "shape": [1, 2.0], "parameters": {"binary_data_size": 8}}),
            json!({}),
        ),
        binary(
            json!({"name": "x", "datatype": "FP99", "shape": [1, 2], "parameters": {"binary_data_size": 8}}),
            json!({}),
        ),
        binary(
            json!({"name": "x", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8, "scale": 0.5}}),
            json!({}),
        ),
        (
            json_body(
                &json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [[1.0, 2.0]]}]}),
            ),
            HeaderValue::from(0),
        ),
        (
            json_body(
                &json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": deep}]}),
            ),
            HeaderValue::from(0),
        ),
        (
            json_body(
                &json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": null}]}),
            ),
            HeaderValue::from(0),
        ),
        (json_body(&json!({"inputs": []})), HeaderValue::from(0)),
        (json_body(&json!({"inputs": null})), HeaderValue::from(0)),
        (
            Bytes::from_static(br#"{"inputs": [], "inputs": []}"#),
            HeaderValue::from(0),
        ),
    ];
    let mut typed = 0;
    for (i, (body, len)) in cases.into_iter().enumerate() {
        let len = (len != HeaderValue::from(0)).then_some(len);
        let fields = request::parse_fields(body.clone(), len.as_ref());
        if let Some(t) = crate::typed::parse(&body, len.as_ref()) {
            typed += 1;
            assert_eq!(Ok(t), fields, "case {i}");
        }
        assert_eq!(parse_request(body, len.as_ref()), fields, "case {i}");
    }
    assert_eq!(
        typed, 7,
        "the well-formed bodies of known fields take the typed reading"
    );
}

/// The output selection's key, written directly for outputs without parameters, is the
/// canonical JSON of `[[name, parameters], ...]` sorted by name, as before.
#[test]
fn output_keys_without_parameters_are_the_canonical_list() {
    let names = ["OUTPUT1", "OUTPUT0", "é\"q\u{1}", "a"];
    let selection = OutputSelection {
        requested: Some(
            names
                .iter()
                .map(|n| RequestedOutput {
                    name: (*n).to_owned(),
                    binary_data: Some(true),
                    parameters: Default::default(),
                })
                .collect(),
        ),
        binary_data_output: false,
    };
    let mut sorted = names.to_vec();
    sorted.sort();
    let list = Value::Array(sorted.iter().map(|n| json!([n, {}])).collect());
    assert_eq!(
        selection.key_bytes(),
        infercache_core::canonical::canonical_json(&list).unwrap()
    );
    let two = OutputSelection {
        requested: Some(vec![
            RequestedOutput {
                name: "OUTPUT0".into(),
                binary_data: Some(true),
                parameters: Default::default(),
            },
            RequestedOutput {
                name: "OUTPUT1".into(),
                binary_data: None,
                parameters: Default::default(),
            },
        ]),
        binary_data_output: false,
    };
    assert_eq!(two.key_bytes(), br#"[["OUTPUT0",{}],["OUTPUT1",{}]]"#);
}
