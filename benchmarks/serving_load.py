"""Load test of the local TF-Serving-compatible server, REST and gRPC, next to in-process predict.

Starts ``python -m kerascls.serving.server`` in a subprocess (so the clients here do not share its
interpreter), then sends a fixed number of predict requests (PNG test images of the run as
``image_bytes``) at each concurrency over REST and gRPC, and prints requests/s, images/s, p50 and
p99 latency and the error count (which must be 0). For comparison it times the run's Keras model
in this process on the same decoded pixels: ``model.predict`` in batches of 32 and of one image,
and ``predict_on_batch`` one image at a time.

    python benchmarks/serving_load.py                      # trains a small sentiment run first
    python benchmarks/serving_load.py --run runs/lenet-digits --requests 2000 --batching
    python benchmarks/serving_load.py --concurrency 1,8,32 --images-per-request 4 --json out.json

Exits with status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
warnings.filterwarnings("ignore", category=UserWarning)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BATCHING_CONFIG = ROOT / "serving" / "batching.config"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_small_run(root: Path) -> Path:
    """The lab's seed CNN on the sentiment images (a few seconds), without exports."""
    from kerascls.config import make_parser, resolve
    from kerascls.train import train

    args = make_parser("train", "").parse_args(
        [
            "--dataset",
            "sentiment",
            "--model",
            "seed_cnn",
            "--epochs",
            "10",
            "--verbose",
            "0",
            "--formats",
            "",
            "--output-dir",
            str(root),
        ]
    )
    return Path(train(resolve(args)))


def start_server(base_path: Path, grpc_port: int, rest_port: int, batching: bool):
    cmd = [
        sys.executable,
        "-m",
        "kerascls.serving.server",
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        "--model_name=bench",
        f"--model_base_path={base_path}",
    ]
    if batching:
        cmd += ["--enable_batching", f"--batching_parameters_file={BATCHING_CONFIG}"]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    return proc, log


def wait_until_up(proc, log, client, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"the server exited:\n{log.read()[-3000:]}")
        try:
            client.status()
            return
        except Exception:  # noqa: BLE001 - still starting
            time.sleep(0.5)
    raise SystemExit("the server did not come up in time")


def load(
    protocol: str, port: int, concurrency: int, requests: int, batch: list[bytes], warmup: int = 5
) -> dict:
    """``requests`` predict calls split over ``concurrency`` threads, one client each."""
    from kerascls.serving.client import ServingClient

    clients = [
        ServingClient("bench", port=port, protocol=protocol, timeout=60) for _ in range(concurrency)
    ]
    for c in clients:  # open connections / channels before timing
        for _ in range(warmup):
            c.predict(batch)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def work(client):
        mine, bad = [], []
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            t0 = time.perf_counter()
            try:
                client.predict(batch)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                bad.append(str(exc))
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    lat = np.array(latencies) * 1000.0
    return {
        "protocol": protocol,
        "concurrency": concurrency,
        "requests": requests,
        "requests_per_s": requests / wall,
        "images_per_s": requests * len(batch) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def in_process(run, pixels: np.ndarray, repeats: int = 3) -> dict:
    """Keras images/s on the same pixels: predict (batches of 32 and 1), predict_on_batch (1)."""
    model = run.deployable()
    model.predict(pixels[:32], verbose=0)
    many = np.concatenate([pixels] * max(1, -(-2048 // len(pixels))))  # amortize predict's setup
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.predict(many, batch_size=32, verbose=0)
        best = min(best, time.perf_counter() - t0)
    one = pixels[:1]
    model.predict(one, verbose=0)
    n = min(200, len(pixels))
    t0 = time.perf_counter()
    for i in range(n):
        model.predict(pixels[i : i + 1], verbose=0)
    single = time.perf_counter() - t0
    model.predict_on_batch(one)
    t0 = time.perf_counter()
    for i in range(n):
        model.predict_on_batch(pixels[i : i + 1])
    on_batch = time.perf_counter() - t0
    return {
        "predict_batch32_images_per_s": len(many) / best,
        "predict_batch1_images_per_s": n / single,
        "predict_on_batch1_images_per_s": n / on_batch,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", help="trained run directory (default: train a small sentiment run)"
    )
    parser.add_argument("--requests", type=int, default=1000, help="requests per configuration")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client threads")
    parser.add_argument("--protocols", default="rest,grpc", help="rest, grpc or both")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument(
        "--batching",
        action="store_true",
        help=f"start the server with --enable_batching ({BATCHING_CONFIG.name})",
    )
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="serving-load-"))
    try:
        return _measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(args, work: Path) -> int:
    from kerascls.data.preprocess import read_image
    from kerascls.export.saved_model import encode_png, export_saved_model
    from kerascls.runs import load_run
    from kerascls.serving.client import ServingClient

    run_dir = Path(args.run) if args.run else train_small_run(work / "runs")
    run = load_run(run_dir)
    version = export_saved_model(run, run.path, models_dir=work / "models")[0]
    base = version.parent
    x = run.dataset().x_test
    images = [encode_png(np.clip(np.round(im), 0, 255).astype(np.uint8)) for im in x]
    png_dir = work / "png"
    png_dir.mkdir()
    for i, blob in enumerate(images):
        (png_dir / f"{i}.png").write_bytes(blob)
    pixels = np.stack([read_image(png_dir / f"{i}.png") for i in range(len(images))]).astype(
        np.float32
    )
    batch = images[: max(1, args.images_per_request)]

    grpc_port, rest_port = free_port(), free_port()
    proc, log = start_server(base, grpc_port, rest_port, args.batching)
    results = []
    try:
        wait_until_up(proc, log, ServingClient("bench", port=rest_port, timeout=5))
        for protocol in [p.strip() for p in args.protocols.split(",") if p.strip()]:
            port = rest_port if protocol == "rest" else grpc_port
            for c in [int(v) for v in args.concurrency.split(",")]:
                results.append(load(protocol, port, c, args.requests, batch))
                r = results[-1]
                print(
                    f"  {protocol:4s} c={c:<3d} {r['requests_per_s']:8.1f} req/s  "
                    f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}",
                    file=sys.stderr,
                )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    local = in_process(run, pixels)

    print(
        f"\nmodel {run.metadata['model_name']} {run.metadata['input_shape']}, "
        f"{len(batch)} PNG image(s) per request, {args.requests} requests per row, "
        f"batching {'on' if args.batching else 'off'}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'protocol':<9}{'conc':>5}{'req/s':>10}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}"
    )
    for r in results:
        print(
            f"{r['protocol']:<9}{r['concurrency']:>5}{r['requests_per_s']:>10.1f}"
            f"{r['images_per_s']:>10.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
        )
    print(
        "in-process Keras model.predict, batch 32: "
        f"{local['predict_batch32_images_per_s']:.0f} images/s"
    )
    print(
        "in-process Keras model.predict, batch 1:  "
        f"{local['predict_batch1_images_per_s']:.0f} images/s"
    )
    print(
        "in-process Keras predict_on_batch, batch 1: "
        f"{local['predict_on_batch1_images_per_s']:.0f} images/s"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"results": results, "in_process": local, "batching": args.batching}, indent=2
            )
            + "\n"
        )
    errors = sum(r["errors"] for r in results)
    if errors:
        print(
            f"FAILED: {errors} request(s) failed; first: "
            f"{next(r['first_error'] for r in results if r['errors'])}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
