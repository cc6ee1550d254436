"""The quick start's client: waits for the server, sends one real v2 request, compares with eager PyTorch."""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import tritonclient.http as httpclient

from torchport.exporters.examples.cnn import make_model
from torchport.runtimes import ModelPackage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="host:port of a running `torchport serve`")
    parser.add_argument("--package", required=True, help="the package the server serves")
    args = parser.parse_args()

    manifest = ModelPackage.load(args.package).manifest
    client = httpclient.InferenceServerClient(args.url)
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.is_model_ready(manifest.name):
                break
        except Exception:  # connection refused while the server starts
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"server at {args.url} not ready after 60 s; see its log")
        time.sleep(0.2)

    images = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    (spec,) = manifest.inputs
    request = httpclient.InferInput(spec.name, list(images.shape), "FP32")
    request.set_data_from_numpy(images, binary_data=True)
    result = client.infer(manifest.name, inputs=[request], request_id="quickstart-1")
    response = result.get_response()
    served = result.as_numpy(manifest.outputs[0].name)
    with torch.no_grad():
        eager = make_model()(torch.from_numpy(images)).numpy()

    print(
        f"model {response['model_name']} version {response.get('model_version', '?')}, request id {response.get('id')}"
    )
    print(f"output {manifest.outputs[0].name!r} shape {list(served.shape)}")
    print("served classes:", served.argmax(axis=1).tolist(), " eager classes:", eager.argmax(axis=1).tolist())
    diff = float(np.abs(served - eager).max())
    print(f"max |served - eager PyTorch| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("served output differs from eager PyTorch by more than 1e-4")
    print("OK: served result equals eager PyTorch")


if __name__ == "__main__":
    main()
