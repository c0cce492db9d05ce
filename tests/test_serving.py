"""The local TF-Serving-compatible server and client: REST, gRPC, routing, versions, bad input."""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_saved_model import png_bomb, png_bytes, png_zero_size

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

MAX_REQUEST_BYTES = 1_000_000
BRIGHT = (np.ones((8, 8, 3)) * np.array([0.9, 0.8, 0.7]) * 255).round().astype(np.uint8)
DARK = (np.ones((8, 8, 3)) * np.array([0.1, 0.2, 0.1]) * 255).round().astype(np.uint8)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None):
    """``(status, parsed JSON or text)`` of one HTTP request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        payload = response.read()
        ctype = response.getheader("Content-Type", "")
    finally:
        conn.close()
    return response.status, (json.loads(payload) if "json" in ctype else payload.decode())


def post(port: int, path: str, doc) -> tuple[int, object]:
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return request(port, "POST", path, body, {"Content-Type": "application/json"})


def wait_for(predicate, timeout: float = 60.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")


@pytest.fixture(scope="module")
def served(digits_run, sentiment_run, tmp_path_factory):
    """A server for digits (versions 1 and 2, labels stable and canary) and sentiment (latest)."""
    from kerascls.export.saved_model import export_saved_model
    from kerascls.runs import load_run
    from kerascls.serving.configs import BatchingConfig, MonitoringConfig
    from kerascls.serving.manager import parse_model_config
    from kerascls.serving.server import ModelServer

    root = tmp_path_factory.mktemp("serving")
    digits, sentiment = load_run(digits_run), load_run(sentiment_run)
    for _ in range(2):
        export_saved_model(digits, digits.path, models_dir=root)
    export_saved_model(sentiment, sentiment.path, models_dir=root)
    digits_base = root / digits.metadata["model_name"]
    sentiment_base = root / sentiment.metadata["model_name"]
    config = root / "models.config"
    config.write_text(f"""
model_config_list {{
  config {{ name: 'digits' base_path: '{digits_base}' model_platform: 'tensorflow'
           model_version_policy {{ all {{}} }}
           version_labels {{ key: 'stable' value: 1 }}
           version_labels {{ key: 'canary' value: 2 }} }}
  config {{ name: 'sentiment' base_path: '{sentiment_base}' model_platform: 'tensorflow' }}
}}""")
    server = ModelServer(
        parse_model_config(config.read_text()),
        poll_seconds=0.2,
        max_request_bytes=MAX_REQUEST_BYTES,
        batching=BatchingConfig(max_batch_size=64, batch_timeout_micros=2000, num_batch_threads=2),
        monitoring=MonitoringConfig(prometheus_enabled=True),
    )
    server.start()
    yield {
        "server": server,
        "rest": server.rest_port,
        "grpc": server.grpc_port,
        "digits": digits,
        "sentiment": sentiment,
        "digits_base": digits_base,
    }
    server.stop()


def test_lab_example_bright_png_is_positive(served):
    """The lab's REST call: a bright 8x8 PNG as base64 comes back 'positive' with score > 0.9."""
    status, doc = post(
        served["rest"],
        "/v1/models/sentiment:predict",
        {"instances": [b64(png_bytes(BRIGHT)), b64(png_bytes(DARK))]},
    )
    assert status == 200, doc
    bright, dark = doc["predictions"]
    assert bright["label"] == "positive" and bright["score"] > 0.9
    assert dark["label"] == "negative"
    assert sorted(bright) == ["class_id", "label", "probabilities", "score"]


def test_rest_row_and_columnar_formats_match_the_saved_model(served):
    import tensorflow as tf

    run = served["digits"]
    images = [png_bytes(im) for im in run.dataset().x_test[:5].round().astype(np.uint8)]
    direct = tf.saved_model.load(str(served["digits_base"] / "2")).signatures["serving_default"](
        image_bytes=tf.constant(images)
    )
    status, rows = post(
        served["rest"], "/v1/models/digits:predict", {"instances": [b64(i) for i in images]}
    )
    assert status == 200, rows
    status, cols = post(
        served["rest"],
        "/v1/models/digits:predict",
        {"signature_name": "serving_default", "inputs": [b64(i) for i in images]},
    )
    assert status == 200, cols
    probs = np.array([r["probabilities"] for r in rows["predictions"]])
    np.testing.assert_allclose(probs, direct["probabilities"].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.array(cols["outputs"]["probabilities"]), probs, atol=1e-6)
    assert cols["outputs"]["label"] == [r["label"] for r in rows["predictions"]]
    assert cols["outputs"]["class_id"] == [int(v) for v in direct["class_id"].numpy()]
    pixels = run.dataset().x_test[:2]
    status, doc = post(
        served["rest"],
        "/v1/models/digits:predict",
        {"signature_name": "predict_pixels", "instances": pixels.tolist()},
    )
    assert status == 200, doc
    np.testing.assert_allclose(
        [r["probabilities"] for r in doc["predictions"]], run.predict_proba(pixels), atol=1e-5
    )


def test_grpc_round_trip_matches_rest(served):
    from kerascls.serving.client import ServingClient

    images = [png_bytes(BRIGHT), png_bytes(DARK)]
    rest = ServingClient("sentiment", port=served["rest"]).predict(images)
    grpc_client = ServingClient("sentiment", port=served["grpc"], protocol="grpc")
    via_grpc = grpc_client.predict(images)
    assert [p.label for p in via_grpc] == [p.label for p in rest] == ["positive", "negative"]
    np.testing.assert_allclose(
        [p.probabilities for p in via_grpc], [p.probabilities for p in rest], atol=1e-6
    )
    h, w, _ = served["sentiment"].metadata["input_shape"]
    pixels = grpc_client.predict_pixels(np.full((h, w, 3), BRIGHT[0, 0], np.float32))
    assert pixels[0].label == "positive"
    assert grpc_client.status() == ServingClient("sentiment", port=served["rest"]).status()
    meta = grpc_client.metadata()
    assert meta["model_spec"] == {"name": "sentiment", "version": "1", "signature_name": ""}
    grpc_client.close()


def test_status_and_metadata_have_tf_serving_json_shapes(served):
    status, doc = request(served["rest"], "GET", "/v1/models/digits")
    assert status == 200 and list(doc) == ["model_version_status"]
    entries = {e["version"]: e for e in doc["model_version_status"]}
    for version in ("1", "2"):
        assert entries[version] == {
            "version": version,
            "state": "AVAILABLE",
            "status": {"error_code": "OK", "error_message": ""},
        }
    versions = [int(e["version"]) for e in doc["model_version_status"]]
    assert versions == sorted(versions, reverse=True)
    status, doc = request(served["rest"], "GET", "/v1/models/digits/versions/1/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    default = sigs["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert default["inputs"]["image_bytes"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}],
        "unknown_rank": False,
    }
    assert set(default["outputs"]) == {"probabilities", "class_id", "label", "score"}
    assert default["outputs"]["class_id"]["dtype"] == "DT_INT64"
    pixels = sigs["predict_pixels"]["inputs"]["pixels"]
    h, w, _ = served["digits"].metadata["input_shape"]
    assert [d["size"] for d in pixels["tensor_shape"]["dim"]] == ["-1", str(h), str(w), "3"]


def test_version_and_label_routing(served):
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    port = served["rest"]
    for path, version in (
        ("/v1/models/digits/versions/1", "1"),
        ("/v1/models/digits/labels/stable", "1"),
        ("/v1/models/digits/labels/canary", "2"),
    ):
        status, doc = request(port, "GET", path + "/metadata")
        assert status == 200 and doc["model_spec"]["version"] == version, (path, doc)
        status, doc = post(port, path + ":predict", {"instances": [b64(png_bytes(BRIGHT))]})
        assert status == 200 and len(doc["predictions"]) == 1
        status, doc = request(port, "GET", path)
        assert [v["version"] for v in doc["model_version_status"]] == [version]
    with grpc.insecure_channel(f"127.0.0.1:{served['grpc']}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for spec, version in (({"version_label": "canary"}, 2), ({"version_label": "stable"}, 1)):
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "digits"
            if "version_label" in spec:
                req.model_spec.version_label = spec["version_label"]
            req.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png_bytes(BRIGHT)]))
            assert stub.Predict(req, timeout=30).model_spec.version.value == version


def test_a_new_version_is_picked_up_while_serving(served):
    from kerascls.export.saved_model import export_saved_model
    from kerascls.serving.client import ServingClient

    run = served["digits"]
    path = export_saved_model(run, run.path, models_dir=served["digits_base"].parent)[0]
    assert path.name == "3"
    client = ServingClient("digits", port=served["rest"], version=3)

    def available():
        try:
            return client.status()["model_version_status"][0]["state"] == "AVAILABLE"
        except Exception:  # noqa: BLE001 - not there yet
            return False

    wait_for(available)
    assert client.predict([png_bytes(BRIGHT)])[0].label in run.labels
    status, doc = request(served["rest"], "GET", "/v1/models/digits/metadata")
    assert doc["model_spec"]["version"] == "3"  # latest


@functools.lru_cache(maxsize=1)
def _bad_requests():
    good = png_bytes((np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8))
    image = b64(png_bytes(BRIGHT))
    p = "/v1/models/sentiment:predict"
    return {
        "empty body": (p, b"", 400),
        "malformed JSON": (p, b'{"instances": [', 400),
        "not an object": (p, b"[1, 2]", 400),
        "instances and inputs": (p, {"instances": [image], "inputs": [image]}, 400),
        "neither instances nor inputs": (p, {"signature_name": "serving_default"}, 400),
        "empty instances": (p, {"instances": []}, 400),
        "invalid base64": (p, {"instances": [{"b64": "not*base64!"}]}, 400),
        "not an image": (p, {"instances": [b64(b"GIF89a but not really")]}, 400),
        "truncated PNG": (p, {"instances": [b64(good[: len(good) // 2])]}, 400),
        "0x0 image": (p, {"instances": [b64(png_zero_size())]}, 400),
        "30000x30000 PNG bomb": (p, {"instances": [b64(png_bomb())]}, 400),
        "wrong input name": (p, {"instances": [{"image": image}]}, 400),
        "wrong input name, columnar": (p, {"inputs": {"image": [image]}}, 400),
        "wrong type": (p, {"instances": [3.5]}, 400),
        "wrong type, pixels": (
            p,
            {"signature_name": "predict_pixels", "instances": [[[["a", "b", "c"]] * 8] * 8]},
            400,
        ),
        "wrong shape, pixels": (
            p,
            {"signature_name": "predict_pixels", "instances": [[[[1, 2, 3]] * 4] * 4]},
            400,
        ),
        "ragged instances": (
            p,
            {
                "signature_name": "predict_pixels",
                "instances": [[[[1, 2, 3]] * 8] * 8, [[[1, 2, 3]] * 7] * 8],
            },
            400,
        ),
        "unknown signature": (p, {"signature_name": "nope", "instances": [image]}, 400),
        "signature name not a string": (p, {"signature_name": 7, "instances": [image]}, 400),
        "unknown model": ("/v1/models/nope:predict", {"instances": [image]}, 404),
        "unknown version": ("/v1/models/sentiment/versions/9:predict", {"instances": [image]}, 404),
        "unknown label": ("/v1/models/sentiment/labels/beta:predict", {"instances": [image]}, 400),
        "malformed path": ("/v1/models/sentiment:explain", {"instances": [image]}, 400),
        "oversized body": (p, {"instances": [b64(b"x" * MAX_REQUEST_BYTES)]}, 413),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_input_is_a_4xx_json_error_and_the_server_keeps_serving(served, case):
    path, body, expected = _bad_requests()[case]
    status, doc = post(served["rest"], path, body)
    assert status == expected, (case, status, doc)
    assert isinstance(doc, dict) and isinstance(doc.get("error"), str) and doc["error"], doc
    status, doc = post(
        served["rest"], "/v1/models/sentiment:predict", {"instances": [b64(png_bytes(BRIGHT))]}
    )
    assert status == 200 and doc["predictions"][0]["label"] == "positive"


def test_bad_status_and_metadata_requests(served):
    port = served["rest"]
    assert request(port, "GET", "/v1/models/nope")[0] == 404
    assert request(port, "GET", "/v1/models/digits/versions/7")[0] == 404
    assert request(port, "GET", "/v1/models/digits/labels/beta")[0] == 400
    assert request(port, "GET", "/v1/models/digits/versions/7/metadata")[0] == 404
    status, doc = request(port, "GET", "/v1/nothing/here")
    assert status == 400 and doc["error"].startswith("Malformed request")


def test_grpc_errors_carry_status_codes(served):
    from kerascls.serving.client import ServingClient, ServingClientError

    port = served["grpc"]
    cases = {
        "NOT_FOUND": ServingClient("nope", port=port, protocol="grpc"),
        "INVALID_ARGUMENT": ServingClient("sentiment", port=port, protocol="grpc", label="beta"),
    }
    for code, client in cases.items():
        with pytest.raises(ServingClientError) as err:
            client.predict([png_bytes(BRIGHT)])
        assert err.value.status == code
    client = ServingClient("sentiment", port=port, protocol="grpc")
    for bad in ([b"not an image"], [png_bomb()]):
        with pytest.raises(ServingClientError) as err:
            client.predict(bad)
        assert err.value.status == "INVALID_ARGUMENT"
    with pytest.raises(ServingClientError) as err:
        client.predict_raw({"image_bytes": np.zeros(2, np.float32)})
    assert err.value.status == "INVALID_ARGUMENT" and "DT_STRING" in str(err.value)
    assert client.predict([png_bytes(BRIGHT)])[0].label == "positive"


def test_concurrent_requests_over_both_protocols(served):
    from kerascls.serving.client import ServingClient

    clients = [
        ServingClient("sentiment", port=served["rest"]),
        ServingClient("sentiment", port=served["grpc"], protocol="grpc"),
    ]
    images = [png_bytes(BRIGHT), png_bytes(DARK)]
    results, errors = [], []

    def work(i):
        try:
            for _ in range(5):
                results.append([p.label for p in clients[i % 2].predict(images)])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert results == [["positive", "negative"]] * 80
    status, text = request(served["rest"], "GET", "/monitoring/prometheus/metrics")
    assert status == 200
    assert ':tensorflow:serving:request_count{model_name="sentiment",status="OK"}' in text


def test_client_cli_predict_status_metadata(served, tmp_path, capsys):
    from kerascls.serving.client import main

    image = tmp_path / "bright.png"
    image.write_bytes(png_bytes(BRIGHT))
    for protocol, port in (("rest", served["rest"]), ("grpc", served["grpc"])):
        args = ["--model", "sentiment", "--port", str(port), "--protocol", protocol]
        assert main(["predict", str(image), "--json", *args]) == 0
        line = json.loads(capsys.readouterr().out.strip())
        assert line["label"] == "positive" and line["image"] == str(image)
        assert main(["status", *args]) == 0
        assert (
            json.loads(capsys.readouterr().out)["model_version_status"][0]["state"] == "AVAILABLE"
        )
        assert main(["metadata", *args]) == 0
        assert "serving_default" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "missing.png"), "--port", str(served["rest"])]) == 2
    assert "image file not found" in capsys.readouterr().err
    assert main(["predict", str(image), "--model", "nope", "--port", str(served["rest"])]) == 2
    assert "HTTP 404" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_cli_mirrors_tensorflow_model_server(served, tmp_path):
    """``python -m kerascls.serving.server`` with tensorflow_model_server's flags, then SIGTERM."""
    from kerascls.serving.client import ServingClient
    from kerascls.serving.server import main

    grpc_port, rest_port = _free_port(), _free_port()
    base = served["digits_base"].parent / served["sentiment"].metadata["model_name"]
    cmd = [
        sys.executable,
        "-m",
        "kerascls.serving.server",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        "--model_name=clf",
        f"--model_base_path={base}",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    try:
        client = ServingClient("clf", port=rest_port, timeout=5)

        def up():
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read())
            try:
                return client.status()
            except Exception:  # noqa: BLE001 - still starting
                return None

        wait_for(up, timeout=120, every=0.5)
        assert client.predict([png_bytes(BRIGHT)])[0].label == "positive"
        grpc = ServingClient("clf", port=grpc_port, protocol="grpc")
        assert grpc.predict([png_bytes(DARK)])[0].label == "negative"
        grpc.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-3000:]
    assert main(["--model_base_path", str(tmp_path / "nowhere")]) == 2
    assert main(["--model_name", "x"]) == 2
    assert (
        main(
            [
                "--rest_api_port",
                "8501",
                "--model_base_path",
                str(base),
                "--batching_parameters_file",
                str(tmp_path / "b.config"),
            ]
        )
        == 2
    )


def test_config_reload_moves_a_label(served, tmp_path):
    """--model_config_file_poll_wait_seconds: promoting the canary is a config edit, no restart."""
    from kerascls.serving.manager import ModelManager, parse_model_config
    from kerascls.serving.server import _ConfigReloader

    base = served["digits_base"]
    config = tmp_path / "models.config"

    def write(stable: int):
        config.write_text(f"""model_config_list {{ config {{ name: 'digits' base_path: '{base}'
            model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
            version_labels {{ key: 'stable' value: {stable} }} }} }}""")

    write(1)
    manager = ModelManager(parse_model_config(config.read_text()), poll_seconds=0)
    manager.config_reloader = _ConfigReloader(config, 0.0, manager)
    manager.poll()
    assert manager.servable("digits", label="stable").version == 1
    assert sorted(v for v, s in manager.snapshot()["digits"].items() if s == "AVAILABLE") == [1, 2]
    write(2)
    os.utime(config, (time.time() + 5, time.time() + 5))
    manager.poll()
    assert manager.servable("digits", label="stable").version == 2
    config.write_text("model_config_list { config { name: 'digits' nonsense: 1 } }")
    os.utime(config, (time.time() + 10, time.time() + 10))
    manager.poll()  # a broken edit keeps the previous config
    assert manager.servable("digits", label="stable").version == 2


def test_deployment_kit_files_are_valid():
    import yaml

    from kerascls.serving.configs import parse_batching, parse_monitoring
    from kerascls.serving.manager import parse_model_config

    kit = Path(__file__).resolve().parents[1] / "serving"
    (model,) = parse_model_config((kit / "models.config").read_text())
    assert (model.name, str(model.base_path)) == ("clf", "/models/clf")
    assert model.labels == {"stable": 1, "canary": 2} and model.policy == ("specific", (1, 2))
    batching = parse_batching((kit / "batching.config").read_text())
    assert (batching.max_batch_size, batching.batch_timeout_micros) == (32, 2000)
    monitoring = parse_monitoring((kit / "monitoring.config").read_text())
    assert (
        monitoring.prometheus_enabled
        and monitoring.prometheus_path == "/monitoring/prometheus/metrics"
    )
    compose = yaml.safe_load((kit / "docker-compose.yml").read_text())
    service = compose["services"]["tfserving"]
    image = re.fullmatch(
        r"tensorflow/serving:\$\{TF_SERVING_TAG:-(\d+)\.(\d+)\.\d+\}", service["image"]
    )
    assert image, f"pin an explicit tensorflow/serving tag, not {service['image']}"
    pyproject = (kit.parent / "pyproject.toml").read_text()
    api = re.search(r'"tensorflow-serving-api==(\d+)\.(\d+)\.\*"', pyproject)
    assert api and image.groups() == api.groups(), "the image and tensorflow-serving-api differ"
    assert {"8500:8500", "8501:8501"} <= set(service["ports"])
    flags = " ".join(service["command"])
    for flag in (
        "--model_config_file=",
        "--enable_batching",
        "--batching_parameters_file=",
        "--monitoring_config_file=",
    ):
        assert flag in flags
    from kerascls.serving.server import build_parser

    build_parser().parse_args(service["command"])  # the local server takes the same flags
    readme = (kit / "README.md").read_text()
    assert "python -m kerascls.serving.server" in readme and "curl" in readme
