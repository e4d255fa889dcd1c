#!/usr/bin/env python3
"""Drives the KServe v2 routes a Triton client uses, with the official tritonclient HTTP
client, and prints what it saw as one JSON line.

    scripts/tritonclient_protocol.py URL [--model simple] [--unknown nope]

URL is a KServe v2 server (`http://127.0.0.1:8000`). In order: server metadata,
liveness and readiness, the model's readiness, metadata and configuration; an inference
with JSON tensors and one with binary tensors (inputs and outputs, on different rows, each
checked against the test model: OUTPUT0 = INPUT0 * 2 + 1, OUTPUT1 = each row's sum
truncated to INT64); then the model metadata and an inference of the unknown model, each
of which must raise InferenceServerException. For those, the report holds `str()` of the
exception (it must itself not fail) and whether its message is a string.

Needs `pip install 'tritonclient[http]' numpy`. Exits non-zero when a call that must
succeed fails; the caller checks the report's values.
"""

import argparse
import json
from urllib.parse import urlparse

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def infer(client, model, x, binary):
    """One inference of `x`, tensors binary or JSON; both outputs as numpy."""
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
    ]
    result = client.infer(model, [inp], outputs=outputs)
    return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")


def correct(x, outputs):
    out0, out1 = outputs
    return bool(
        out0 is not None
        and out1 is not None
        and np.array_equal(out0, x * 2 + 1)
        and np.array_equal(out1, x.sum(axis=1).astype(np.int64))
    )


def refusal(call):
    """What the exception `call` raises says: its `str()` and whether the message is text."""
    try:
        call()
    except InferenceServerException as e:
        return {"str": str(e), "message_is_text": isinstance(e.message(), str)}
    return {"str": None, "message_is_text": False}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", default="simple")
    parser.add_argument("--unknown", default="nope")
    args = parser.parse_args()

    address = urlparse(args.url)
    client = httpclient.InferenceServerClient(url=address.netloc or args.url)
    model = args.model
    report = {
        "server": client.get_server_metadata(),
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "metadata": client.get_model_metadata(model),
        "config": client.get_model_config(model),
    }
    x_json = (np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5 + 3.0).astype(np.float32)
    x_binary = (np.arange(9, dtype=np.float32).reshape(3, 3) * -0.25 + 9.0).astype(np.float32)
    report["json_correct"] = correct(x_json, infer(client, model, x_json, binary=False))
    report["binary_correct"] = correct(x_binary, infer(client, model, x_binary, binary=True))
    unknown = args.unknown
    report["unknown_metadata"] = refusal(lambda: client.get_model_metadata(unknown))
    report["unknown_infer"] = refusal(lambda: infer(client, unknown, x_json, binary=True))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
