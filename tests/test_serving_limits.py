"""The local server under hostile requests: every request's work bounded, every error JSON.

Declared tensor sizes, instances and pixels per request, chunked and short bodies, deep JSON,
unknown methods, slow and vanishing clients, flags out of range, and versions that arrive slowly.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_saved_model import png_bytes
from test_serving import BRIGHT, b64, post, request, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_BYTES = 200_000
MAX_INSTANCES = 8
MAX_REQUEST_PIXELS = 1000  # 8 images of 8x8 fit; 2 of 24x24 do not
TIMEOUT = 2.0


@pytest.fixture(scope="module")
def limited(sentiment_run, tmp_path_factory):
    """The sentiment model behind a server with small limits and a 2 s REST deadline."""
    from kerascls.export.saved_model import export_saved_model
    from kerascls.runs import load_run
    from kerascls.serving.manager import ModelSource
    from kerascls.serving.server import ModelServer

    root = tmp_path_factory.mktemp("limited")
    run = load_run(sentiment_run)
    version = export_saved_model(run, run.path, models_dir=root)[0]
    server = ModelServer(
        [ModelSource("clf", version.parent)],
        poll_seconds=0.2,
        max_request_bytes=MAX_BYTES,
        max_instances=MAX_INSTANCES,
        max_request_pixels=MAX_REQUEST_PIXELS,
        rest_timeout=TIMEOUT,
    )
    server.start()
    yield {"server": server, "rest": server.rest_port, "grpc": server.grpc_port, "version": version}
    server.stop()


def _raw(port: int, data: bytes, read_timeout: float = 15.0) -> tuple[int, dict, float]:
    """Send raw bytes, read the answer: ``(status, JSON body, seconds)``."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            raw = b"".join(chunks)
            head, sep, body = raw.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if sep and length and len(body) >= length[0]:
                break
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head, f"no answer within {read_timeout}s"
    status = int(head.split(b" ")[1])
    assert b"application/json" in head.lower(), head
    return status, json.loads(body), time.monotonic() - started


PREDICT = "/v1/models/clf:predict"


# -- work per request ---------------------------------------------------------------------------
def test_grpc_declared_shape_is_checked_before_allocating(limited):
    """28 bytes that declare 192 million floats are refused, never broadcast."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{limited['grpc']}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for shape in ([1_000_000, 8, 8, 3], [4, 400, 400, 3]):
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "clf"
            req.model_spec.signature_name = "predict_pixels"
            tensor = req.inputs["pixels"]
            tensor.dtype = 1  # DT_FLOAT
            for d in shape:
                tensor.tensor_shape.dim.add(size=d)
            tensor.float_val.append(1.0)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                stub.Predict(req, timeout=30)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "limit" in err.value.details(), err.value.details()
            assert time.monotonic() - started < 5


def test_tensor_protos_must_fill_their_shape_exactly():
    from kerascls.serving import protos
    from kerascls.serving.status import ServingError
    from kerascls.serving.tensors import from_numpy, to_numpy

    pixels = np.arange(24, dtype=np.float32).reshape(2, 2, 2, 3)
    proto = from_numpy(pixels, protos.TensorProto)
    np.testing.assert_array_equal(to_numpy(proto, max_elements=24, max_batch=2), pixels)
    for limits in ({"max_elements": 23}, {"max_batch": 1}):
        with pytest.raises(ServingError):
            to_numpy(proto, **limits)
    short = protos.TensorProto.FromString(proto.SerializeToString())
    short.tensor_content = short.tensor_content[:-4]
    strings = from_numpy(np.array([b"a", b"b"], dtype=object), protos.TensorProto)
    strings.tensor_shape.dim[0].size = 3
    negative = from_numpy(pixels, protos.TensorProto)
    negative.tensor_shape.dim[0].size = -2
    for bad in (short, strings, negative):
        with pytest.raises(ServingError) as err:
            to_numpy(bad)
        assert err.value.code == "INVALID_ARGUMENT"


def test_instances_per_request_are_limited(limited):
    image = b64(png_bytes(BRIGHT))
    status, doc = post(limited["rest"], PREDICT, {"instances": [image] * MAX_INSTANCES})
    assert status == 200 and len(doc["predictions"]) == MAX_INSTANCES
    for body in ({"instances": [image] * (MAX_INSTANCES + 1)}, {"inputs": [image] * 50}):
        status, doc = post(limited["rest"], PREDICT, body)
        assert status == 400 and "--max_instances_per_request" in doc["error"], doc


def test_decoded_pixels_per_request_are_limited(limited):
    big = np.zeros((24, 24, 3), np.uint8)
    status, doc = post(limited["rest"], PREDICT, {"instances": [b64(png_bytes(big))] * 2})
    assert status == 400 and "--max_request_pixels" in doc["error"], doc


# -- HTTP ---------------------------------------------------------------------------------------
def test_negative_and_malformed_chunk_sizes_are_refused(limited):
    for size in (b"-10", b"zz", b"fffffffffffffffffff"):
        data = (
            b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            + size
            + b"\r\n{}\r\n0\r\n\r\n"
        )
        status, doc, seconds = _raw(limited["rest"], data)
        assert status == 400 and doc["error"], (size, doc)
        assert seconds < TIMEOUT + 3


def test_chunked_body_over_the_cap_is_413(limited):
    chunk = b"x" * 65536
    data = (
        b"POST "
        + PREDICT.encode()
        + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 4
        + b"0\r\n\r\n"
    )
    status, doc, _ = _raw(limited["rest"], data)
    assert status == 413 and "--max_request_bytes" in doc["error"]


def test_short_body_is_answered_within_the_timeout(limited):
    data = (
        b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        b'{"instances": ['
    )
    status, doc, seconds = _raw(limited["rest"], data)
    assert status == 408 and "--rest_api_timeout_in_ms" in doc["error"]
    assert seconds < TIMEOUT + 3


def test_deeply_nested_json_is_a_400(limited):
    for body in (b"[" * 900 + b"]" * 900, b'{"instances": ' + b"[" * 900 + b"]" * 900 + b"}"):
        status, doc = post(limited["rest"], PREDICT, body)
        assert status == 400 and "nest" in doc["error"], doc


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"])
def test_every_method_is_answered_as_json(limited, method):
    data = f"{method} /v1/models/clf HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
    if method == "HEAD":  # the status and headers of a GET, no body
        conn = http.client.HTTPConnection("127.0.0.1", limited["rest"], timeout=30)
        conn.request("HEAD", "/v1/models/clf")
        response = conn.getresponse()
        assert response.status == 400 and "json" in response.getheader("Content-Type")
        conn.close()
        return
    status, doc, _ = _raw(limited["rest"], data)
    assert 400 <= status < 500 and isinstance(doc.get("error"), str), (method, status, doc)


def test_non_finite_outputs_are_valid_json():
    from kerascls.serving.client import _json_column
    from kerascls.serving.jsonwire import format_predict_response

    outputs = {"probabilities": np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)}
    for row_format in (True, False):
        body = format_predict_response(outputs, row_format)

        def strict(token):
            raise AssertionError(f"bare {token} is not JSON")

        doc = json.loads(body, parse_constant=strict)
        column = (
            [doc["predictions"][0]] if row_format else doc["outputs"]
        )  # a single output: rows are its values
        values = _json_column(column).astype(float)
        assert np.isnan(values[0, 0]) and values[0, 1] == np.inf and values[0, 2] == -np.inf


def test_vanishing_and_slow_clients_cost_no_thread_and_no_traceback(limited, caplog, capfd):
    """200 clients stall mid-body; the server keeps its threads, answers others, logs no trace."""
    caplog.set_level(logging.INFO)
    threads_before = threading.active_count()
    head = b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    stalled = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", limited["rest"]))
        s.sendall(head + b'{"inst')
        stalled.append(s)
    try:
        started = time.monotonic()
        status, doc = post(limited["rest"], PREDICT, {"instances": [b64(png_bytes(BRIGHT))]})
        assert status == 200 and doc["predictions"][0]["label"] == "positive"
        assert time.monotonic() - started < 5
        assert threading.active_count() <= threads_before + 5
    finally:
        for s in stalled[:100]:
            s.close()  # disconnect mid-body
    time.sleep(0.5)
    for s in stalled[100:]:
        s.close()
    time.sleep(0.5)
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert not any(r.exc_info for r in caplog.records), [r.getMessage() for r in caplog.records]
    status, _ = request(limited["rest"], "GET", "/v1/models/clf")
    assert status == 200


def test_grpc_client_imports_no_tensorflow(limited, tmp_path):
    """One gRPC predict from a fresh interpreter: the answer is right and TensorFlow stays out."""
    image = tmp_path / "bright.png"
    image.write_bytes(png_bytes(BRIGHT))
    code = (
        "import sys\n"
        "from kerascls.serving.client import ServingClient\n"
        f"c = ServingClient('clf', port={limited['grpc']}, protocol='grpc')\n"
        f"print(c.predict([{str(image)!r}])[0].label)\n"
        "print(c.status()['model_version_status'][0]['state'])\n"
        "print(sorted(c.metadata()['metadata']['signature_def']['signature_def']))\n"
        "print(any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split("\n")
    assert out[:2] == ["positive", "AVAILABLE"] and "'serving_default'" in out[2]
    assert out[3] == "False", "the gRPC client imported TensorFlow"


# -- flags --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max_request_bytes", "3000000000"),
        ("--max_instances_per_request", "0"),
        ("--rest_api_timeout_in_ms", "-1"),
        ("--max_request_pixels", "0"),
    ],
)
def test_flags_out_of_range_are_one_line_errors_before_loading(tmp_path, capsys, flag, value):
    from kerascls.serving.server import main

    started = time.monotonic()
    assert main(["--model_base_path", str(tmp_path / "nowhere"), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert time.monotonic() - started < 5


# -- versions that arrive slowly ----------------------------------------------------------------
def test_a_version_whose_variables_arrive_late_is_retried(limited, tmp_path):
    """The directory appears with an empty variables/ folder; the weights land seconds later."""
    from kerascls.serving.manager import ModelManager, ModelSource

    source = limited["version"]
    base = tmp_path / "clf"
    target = base / "1"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("variables.*"))
    manager = ModelManager([ModelSource("clf", base)], poll_seconds=0.2)
    manager.start()
    try:
        wait_for(lambda: manager.snapshot()["clf"].get(1) == "END", timeout=120)
        status = manager.status("clf").model_version_status[0]
        assert status.status.error_message  # the load failed and says why
        time.sleep(2.0)  # polls go on meanwhile; back-off keeps the retries few
        attempts = manager.failed_loads("clf", 1)
        assert 1 <= attempts <= 5, attempts
        for part in (source / "variables").iterdir():
            shutil.copy2(part, target / "variables" / part.name)
        wait_for(lambda: manager.snapshot()["clf"].get(1) == "AVAILABLE", timeout=120)
    finally:
        manager.stop()


def test_failed_loads_back_off():
    from kerascls.serving.manager import MAX_RETRY_SECONDS, ModelManager

    manager = ModelManager([], poll_seconds=0.5)
    delays = [manager.retry_delay(n) for n in range(1, 10)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert delays[-1] == MAX_RETRY_SECONDS
