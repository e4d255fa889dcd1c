#!/usr/bin/env python3
"""Writes the request bodies tritonclient's HTTP client sends for one request with
inputs of five datatypes, as binary (binary.body, binary.len: the
Inference-Header-Content-Length) and as JSON (json.body, json.len empty).
The fixtures were written with tritonclient 2.73.0 and numpy 2.4.6; run from this folder.
"""

import numpy as np
import tritonclient.http as h


def inputs(binary):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    b = np.array([[True], [False]])
    s = np.array([[b"ab"], ["é".encode()]], dtype=np.object_)
    i = np.array([[-1, 2**40], [3, 4]], dtype=np.int64)
    h16 = np.array([[0.5], [-2]], dtype=np.float16)
    out = []
    for name, arr, dt in [("X", x, "FP32"), ("B", b, "BOOL"), ("S", s, "BYTES"), ("I", i, "INT64"), ("H", h16, "FP16")]:
        t = h.InferInput(name, list(arr.shape), dt)
        t.set_data_from_numpy(arr, binary_data=binary)
        out.append(t)
    return out


for name, binary in [("binary", True), ("json", False)]:
    outs = [h.InferRequestedOutput("OUT", binary_data=binary)]
    body, json_size = h.InferenceServerClient.generate_request_body(
        inputs(binary), outputs=outs, request_id="7", parameters={"p": 1}
    )
    open(f"{name}.body", "wb").write(body)
    open(f"{name}.len", "w").write("" if json_size is None else str(json_size))
