#!/usr/bin/env python3
"""Runs one inference twice with the official tritonclient HTTP client, binary inputs and
binary outputs, and checks that both answers are identical.

    scripts/tritonclient_check.py URL [--model simple] [--expect-cache] [--check-simple]

URL is a KServe v2 server (`http://127.0.0.1:8000`): infercache in front of an upstream,
or the upstream itself (`cargo run --example kserve_upstream -p infercache-server`).
Needs `pip install 'tritonclient[http]' numpy`.

tritonclient's InferResult does not expose response headers, so the client below records
the `X-Cache` header of each response from the HTTP response it reads. With
`--expect-cache` the first answer must be a MISS and the second a HIT. `--check-simple`
also checks the values against the test model (OUTPUT0 = INPUT0 * 2 + 1, OUTPUT1 = each
row's sum truncated to INT64). Prints one JSON line; exits non-zero on any failure.
"""

import argparse
import json
import sys
from importlib.metadata import version
from urllib.parse import urlparse

import numpy as np
import tritonclient.http as httpclient


class RecordingClient(httpclient.InferenceServerClient):
    """An InferenceServerClient that remembers each response's X-Cache header."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.x_cache = []

    def _post(self, request_uri, request_body, headers, query_params):
        response = super()._post(request_uri, request_body, headers, query_params)
        self.x_cache.append(response.get("X-Cache"))
        return response


def infer(client, model, x):
    """One inference of `x` with binary input and binary outputs."""
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=True),
    ]
    result = client.infer(model, [inp], outputs=outputs, request_id="check")
    return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", default="simple")
    parser.add_argument("--expect-cache", action="store_true", help="first MISS, then HIT")
    parser.add_argument("--check-simple", action="store_true", help="check the test model's values")
    args = parser.parse_args()

    address = urlparse(args.url)
    client = RecordingClient(url=address.netloc or args.url)
    x = (np.arange(12, dtype=np.float32).reshape(4, 3) * 0.25 - 1.0).astype(np.float32)

    first = infer(client, args.model, x)
    second = infer(client, args.model, x)

    failures = []
    for name, a, b in zip(("OUTPUT0", "OUTPUT1"), first, second):
        if a is None or b is None:
            failures.append(f"{name} missing from a response")
        elif a.dtype != b.dtype or a.shape != b.shape or a.tobytes() != b.tobytes():
            failures.append(f"{name} differs between the two calls")
    if args.check_simple:
        if first[0] is None or not np.array_equal(first[0], x * 2 + 1):
            failures.append("OUTPUT0 is not INPUT0 * 2 + 1")
        if first[1] is None or not np.array_equal(first[1], x.sum(axis=1).astype(np.int64)):
            failures.append("OUTPUT1 is not the row sums")
    if args.expect_cache and client.x_cache != ["MISS", "HIT"]:
        failures.append(f"X-Cache was {client.x_cache}, expected ['MISS', 'HIT']")

    print(json.dumps({
        "tritonclient": version("tritonclient"),
        "numpy": np.__version__,
        "x_cache": client.x_cache,
        "output0_shape": None if first[0] is None else list(first[0].shape),
        "output1_shape": None if first[1] is None else list(first[1].shape),
        "identical": not any("differs" in f for f in failures),
        "failures": failures,
    }))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
