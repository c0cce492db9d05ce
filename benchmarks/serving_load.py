"""Load test of the local TF-Serving-compatible server, REST and gRPC, next to in-process predict.

Starts ``python -m kerascls.serving.server`` in a subprocess (so the load generator does not share
its interpreter), then sends a fixed number of predict requests (PNG test images of the run as
``image_bytes``, the body the kerascls client sends) at each concurrency over REST and gRPC, and
prints requests/s, images/s, p50 and p99 latency and the error count (which must be 0). The load
generator is one asyncio loop (aiohttp for REST, ``grpc.aio`` for gRPC) with one connection per
concurrent client, so it spends little of the machine it measures. For comparison it times, in
this process, the exported SavedModel's ``serving_default`` on the same PNGs (batches of 32 and
of one) and the run's Keras model on the decoded pixels (``model.predict`` in batches of 32,
``predict_on_batch`` one image at a time). It also starts the kerascls client in fresh
interpreters (one REST and one gRPC predict each) and reports wall time and peak RSS.

    python benchmarks/serving_load.py                      # trains a small sentiment run first
    python benchmarks/serving_load.py --run runs/lenet-digits --requests 2000 --batching
    python benchmarks/serving_load.py --concurrency 1,8,32 --images-per-request 4 --json out.json

The header line records the date, the CPU count and the load average before the run: figures
from a busy machine are labelled as such. Exits with status 1 if any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def start_server(base_path: Path, grpc_port: int, rest_port: int, batching: bool, threads: int = 0):
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
    if threads:
        cmd += [f"--rest_api_num_threads={threads}", f"--grpc_max_threads={threads}"]
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


def _summary(protocol, concurrency, requests, images, wall, latencies, errors) -> dict:
    lat = np.array(latencies) * 1000.0
    return {
        "protocol": protocol,
        "concurrency": concurrency,
        "requests": requests,
        "requests_per_s": requests / wall,
        "images_per_s": requests * images / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


async def _drive(concurrency: int, requests: int, send, warmup: int = 5):
    """``send(i)`` ``requests`` times from ``concurrency`` tasks: ``(wall, latencies, errors)``."""
    for _ in range(warmup):
        await asyncio.gather(*(send(i) for i in range(concurrency)))
    latencies: list[float] = []
    errors: list[str] = []
    remaining = iter(range(requests))

    async def worker(i):
        while next(remaining, None) is not None:
            t0 = time.perf_counter()
            try:
                await send(i)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return time.perf_counter() - t0, latencies, errors


async def _rest(port: int, concurrency: int, requests: int, batch: list[bytes]) -> dict:
    import aiohttp

    body = json.dumps(
        {"instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in batch]}
    ).encode()
    url = f"http://127.0.0.1:{port}/v1/models/bench:predict"
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send(_):
            async with session.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {payload[:200]!r}")

        wall, latencies, errors = await _drive(concurrency, requests, send)
    return _summary("rest", concurrency, requests, len(batch), wall, latencies, errors)


async def _grpc(port: int, concurrency: int, requests: int, batch: list[bytes]) -> dict:
    import grpc

    from kerascls.serving import protos
    from kerascls.serving.tensors import from_numpy

    request = protos.PredictRequest()
    request.model_spec.name = "bench"
    blobs = np.empty(len(batch), dtype=object)
    blobs[:] = batch
    request.inputs["image_bytes"].CopyFrom(from_numpy(blobs, protos.TensorProto))
    path, request_class, response_class = protos.METHODS["Predict"]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(concurrency)]
    calls = [
        ch.unary_unary(
            path,
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        for ch in channels
    ]

    async def send(i):
        await calls[i](request, timeout=60)

    try:
        wall, latencies, errors = await _drive(concurrency, requests, send)
    finally:
        for ch in channels:
            await ch.close()
    return _summary("grpc", concurrency, requests, len(batch), wall, latencies, errors)


def load(protocol: str, port: int, concurrency: int, requests: int, batch: list[bytes]) -> dict:
    """``requests`` predict calls from ``concurrency`` concurrent clients."""
    run = _rest if protocol == "rest" else _grpc
    return asyncio.run(run(port, concurrency, requests, batch))


def client_start(protocol: str, port: int, image: Path) -> dict:
    """Wall time and peak RSS of a fresh interpreter that imports the client and predicts once.

    The peak is the child's own VmHWM (``ru_maxrss`` would report this process's, inherited
    across ``exec``).
    """
    code = (
        "import sys, time\n"
        "t0 = time.perf_counter()\n"
        "from kerascls.serving.client import ServingClient\n"
        f"c = ServingClient('bench', port={port}, protocol={protocol!r})\n"
        f"c.predict([{str(image)!r}])\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
        "print(time.perf_counter() - t0, hwm.split()[1],\n"
        "      any(m.split('.')[0] == 'tensorflow' for m in sys.modules))\n"
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    return {
        "protocol": protocol,
        "process_s": time.perf_counter() - t0,
        "import_and_predict_s": float(out[0]),
        "peak_rss_mb": int(out[1]) / 1024.0,
        "imports_tensorflow": out[2] == "True",
    }


def saved_model_in_process(version_dir: Path, images: list[bytes], repeats: int = 3) -> dict:
    """The SavedModel's ``serving_default`` on PNG bytes in this process: images/s at 32 and 1."""
    import tensorflow as tf

    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    many = (images * max(1, -(-1024 // len(images))))[:1024]
    batches = [tf.constant(many[i : i + 32]) for i in range(0, len(many), 32)]
    fn(image_bytes=batches[0])
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batches:
            fn(image_bytes=b)
        best = min(best, time.perf_counter() - t0)
    singles = [tf.constant(many[i : i + 1]) for i in range(200)]
    fn(image_bytes=singles[0])
    t0 = time.perf_counter()
    for b in singles:
        fn(image_bytes=b)
    one = time.perf_counter() - t0
    return {
        "saved_model_batch32_images_per_s": len(many) / best,
        "saved_model_batch1_images_per_s": len(singles) / one,
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
    parser.add_argument(
        "--server-threads",
        type=int,
        default=64,
        help="--rest_api_num_threads and --grpc_max_threads of the server (default 64: enough "
        "requests in flight for batching to fill batches at concurrency 32)",
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

    load_before = os.getloadavg()
    started_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    grpc_port, rest_port = free_port(), free_port()
    proc, log = start_server(base, grpc_port, rest_port, args.batching, args.server_threads)
    results, starts = [], []
    try:
        wait_until_up(proc, log, ServingClient("bench", port=rest_port, timeout=5))
        for protocol, port in (("rest", rest_port), ("grpc", grpc_port)):
            starts.append(client_start(protocol, port, png_dir / "0.png"))
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
    local.update(saved_model_in_process(version, images))
    load_after = os.getloadavg()

    print(
        f"\n{started_at}, {os.cpu_count()} CPUs, load average before "
        f"{load_before[0]:.1f} / {load_before[1]:.1f} / {load_before[2]:.1f} (1/5/15 min), "
        f"after {load_after[0]:.1f}"
    )
    print(
        f"model {run.metadata['model_name']} {run.metadata['input_shape']}, "
        f"{len(batch)} PNG image(s) per request, {args.requests} requests per row, "
        f"batching {'on' if args.batching else 'off'}, server threads {args.server_threads}, "
        "load generator in this process (asyncio)"
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
        "in-process SavedModel serving_default on PNGs, batch 32: "
        f"{local['saved_model_batch32_images_per_s']:.0f} images/s; batch 1: "
        f"{local['saved_model_batch1_images_per_s']:.0f} images/s"
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
    for st in starts:
        print(
            f"client start, {st['protocol']}: import + 1 predict {st['import_and_predict_s']:.2f} s"
            f" (process {st['process_s']:.2f} s), peak RSS {st['peak_rss_mb']:.0f} MB, "
            f"imports TensorFlow: {'yes' if st['imports_tensorflow'] else 'no'}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "date": started_at,
                    "cpus": os.cpu_count(),
                    "load_before": load_before,
                    "load_after": load_after,
                    "results": results,
                    "in_process": local,
                    "client_start": starts,
                    "batching": args.batching,
                },
                indent=2,
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
