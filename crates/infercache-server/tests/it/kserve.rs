//! The KServe v2 codec against a real KServe v2 server on loopback: the rows a client
//! sends, split, partly fetched upstream in one batched request, stored and reassembled,
//! equal what the upstream answers for the whole batch.

use axum::http::HeaderValue;
use bytes::Bytes;
use infercache_server::kserve::{
    HEADER_LENGTH, InferResponse, OutputSelection, ResponseMeta, Row, RowOutput, WireFormat,
    assemble_response, build_request, parse_request, parse_response,
};
use serde_json::{Value, json};

use crate::kserve_upstream::{MODEL, Upstream};

/// POSTs `body` to the upstream's infer route; returns the parsed response.
async fn infer(upstream: &Upstream, body: Vec<u8>, header_length: Option<usize>) -> InferResponse {
    let mut req = infercache_core::tls::client()
        .post(format!("{}/v2/models/{MODEL}/infer", upstream.url))
        .body(body);
    if let Some(len) = header_length {
        req = req.header(HEADER_LENGTH, len);
    }
    let response = req.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let len = response.headers().get(HEADER_LENGTH).cloned();
    let bytes = response.bytes().await.unwrap();
    parse_response(bytes, len.as_ref()).unwrap()
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A client request for 4 rows of 3 floats, sent as binary, asking for binary outputs.
fn client_request() -> (Bytes, HeaderValue, Vec<f32>) {
    let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    let header = json!({
        "id": "req-1",
        "inputs": [{"name": "INPUT0", "shape": [4, 3], "datatype": "FP32", "parameters": {"binary_data_size": 48}}],
        "outputs": [
            {"name": "OUTPUT0", "parameters": {"binary_data": true}},
            {"name": "OUTPUT1", "parameters": {"binary_data": true}}
        ]
    });
    let mut body = serde_json::to_vec(&header).unwrap();
    let len = HeaderValue::from(body.len());
    body.extend(f32_bytes(&x));
    (Bytes::from(body), len, x)
}

#[tokio::test]
async fn missing_rows_fetched_in_one_request_reassemble_to_the_whole_batch() {
    let upstream = Upstream::start().await;
    let (body, len, x) = client_request();
    let request = parse_request(body.clone(), Some(&len)).unwrap();
    let rows = request.split(64).unwrap();
    assert_eq!(rows.len(), 4);

    // Rows 0 and 2 were "cached" by an earlier JSON call; rows 3 and 1 are missing.
    let mut stored: Vec<Option<Bytes>> = vec![None; 4];
    for (indices, format) in [
        (vec![0, 2], WireFormat::Json),
        (vec![3, 1], WireFormat::Binary),
    ] {
        let batch: Vec<&Row> = indices.iter().map(|&i| &rows[i]).collect();
        let up = build_request(&batch, &request.outputs, &request.parameters, format).unwrap();
        let response = infer(&upstream, up.body, up.header_length).await;
        for (i, row) in indices.iter().zip(response.split(batch.len()).unwrap()) {
            stored[*i] = Some(Bytes::from(row.encode()));
        }
    }
    assert_eq!(
        (
            upstream.calls(),
            upstream.rows(),
            upstream.binary_requests()
        ),
        (2, 4, 1)
    );

    let decoded: Vec<RowOutput> = stored
        .iter()
        .map(|b| RowOutput::decode(b.as_ref().unwrap()).unwrap())
        .collect();
    let meta = ResponseMeta {
        model_name: MODEL,
        model_version: Some("1"),
        id: request.id.as_deref(),
    };
    let assembled = assemble_response(meta, &decoded, &request.outputs).unwrap();
    assert!(
        assembled.header_length.is_some(),
        "binary outputs were asked for"
    );
    let assembled = parse_response(
        Bytes::from(assembled.body),
        assembled.header_length.map(HeaderValue::from).as_ref(),
    )
    .unwrap();

    // The whole batch sent directly, and the model computed here.
    let direct = infer(
        &upstream,
        body.to_vec(),
        Some(len.to_str().unwrap().parse().unwrap()),
    )
    .await;
    assert_eq!(assembled.outputs, direct.outputs);
    assert_eq!(assembled.id.as_deref(), Some("req-1"));
    let expected0: Vec<f32> = x.iter().map(|v| v * 2.0 + 1.0).collect();
    assert_eq!(&assembled.outputs[0].data[..], &f32_bytes(&expected0)[..]);
    let sums: Vec<u8> = x
        .chunks(3)
        .flat_map(|r| (r.iter().sum::<f32>() as i64).to_le_bytes())
        .collect();
    assert_eq!(&assembled.outputs[1].data[..], &sums[..]);
    upstream.stop().await;
}

#[tokio::test]
async fn the_upstream_answers_json_or_binary_as_asked_and_counts() {
    let upstream = Upstream::start().await;
    let client = infercache_core::tls::client();
    let url = format!("{}/v2/models/{MODEL}/versions/1/infer", upstream.url);
    let response = client
        .post(&url)
        .json(&json!({"inputs": [{"name": "INPUT0", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]}]}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get(HEADER_LENGTH).is_none());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["outputs"][0]["data"], json!([3.0, 5.0, 7.0, 10.0]));
    assert_eq!(
        body["outputs"][1],
        json!({"name": "OUTPUT1", "datatype": "INT64", "shape": [2], "data": [3, 7]})
    );

    let all = OutputSelection {
        requested: None,
        binary_data_output: true,
    };
    let rows = parse_request(
        Bytes::from(json!({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [2]}]}).to_string()),
        None,
    )
    .unwrap()
    .split(1)
    .unwrap();
    let up = build_request(&[&rows[0]], &all, &Default::default(), WireFormat::Binary).unwrap();
    let response = infer(&upstream, up.body, up.header_length).await;
    assert_eq!(&response.outputs[0].data[..], &5f32.to_le_bytes()[..]);
    assert_eq!(
        (
            upstream.calls(),
            upstream.rows(),
            upstream.binary_requests()
        ),
        (2, 3, 1)
    );

    let bad = client
        .post(&url)
        .json(&json!({"inputs": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let other = client
        .get(format!("{}/v2/models/other", upstream.url))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let meta: Value = client
        .get(format!("{}/v2/models/{MODEL}", upstream.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["outputs"][1]["datatype"], "INT64");
    let ready = client
        .get(format!("{}/v2/health/ready", upstream.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(upstream.calls(), 2, "a refused request is not counted");
    upstream.stop().await;
}
