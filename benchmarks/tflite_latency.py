"""TFLite variants on a mid-size model: latency, size, the runner's cold start and overhead.

Trains (or reuses) a run of ResNet-20 at 32x32 on digits (``--model mobilenet_v2 --image-size 96``
for the other mid-size model the issue names; it trains for much longer), exports the four TFLite
variants, and prints:

* p50 / p90 latency of ``invoke()`` per variant at 1 and 2 threads, and the int8 / float32
  latency ratio (target: at most 0.7 on an x86 CPU). The variants are timed round-robin, one
  invocation of each in turn, so that a change in the machine's load affects them alike;
* file sizes and their ratios to float32;
* ``edge/run_tflite.py`` cold start to first prediction (a fresh process, wall clock to exit;
  target: under 1 s) against two TensorFlow paths: the same runner on ``tensorflow.lite`` and
  a Keras script that loads ``model.keras``;
* the runner's per-image overhead over a bare ``invoke()`` when it classifies a folder (the
  interval between consecutive results, decoding on the prefetch thread, against ``invoke()``
  alone; target: under 10%), and the single-image latency with nothing overlapped;
* with ``--emulated``: the same runner under qemu arm64 emulation (``edge/emulate_pi.sh``).
  These are emulator timings, not Raspberry Pi timings.

Usage::

    python benchmarks/tflite_latency.py [--run-dir RUN] [--model resnet20] [--image-size 32]
                                        [--runs 300] [--emulated] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "edge" / "run_tflite.py"
EMULATE = REPO / "edge" / "emulate_pi.sh"
VARIANTS = ("float32", "dynamic", "float16", "int8")
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def train(model: str, size: int, epochs: int, out: Path) -> Path:
    run_dir = out / f"{model}-digits-{size}"
    if (run_dir / "metadata.json").is_file():
        return run_dir
    print(f"training {model} at {size}x{size} on digits for {epochs} epoch(s) ...", flush=True)
    subprocess.run([sys.executable, "-m", "kerascls.train", "--dataset", "digits", "--model",
                    model, "--image-size", str(size), "--epochs", str(epochs), "--formats", "",
                    "--output-dir", str(out), "--run-name", run_dir.name, "--verbose", "0"],
                   check=True, env=ENV)
    return run_dir


def invoke_latencies(paths: dict[str, Path], threads: int, runs: int) -> dict:
    """p50 / p90 ``invoke()`` milliseconds per variant, timed round-robin at batch 1."""
    from kerascls.export.tflite import interpreter, quantize_pixels

    its = {}
    for name, path in paths.items():
        it = interpreter(path, threads=threads)
        inp = it.get_input_details()[0]
        x = np.random.default_rng(0).uniform(0, 255, inp["shape"]).astype(np.float32)
        it.set_tensor(inp["index"], quantize_pixels(x, inp["dtype"], *inp["quantization"]))
        for _ in range(20):
            it.invoke()
        its[name] = it
    times: dict[str, list[float]] = {name: [] for name in its}
    for _ in range(runs):
        for name, it in its.items():
            t0 = time.perf_counter()
            it.invoke()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, values in times.items():
        ms = np.asarray(values) * 1e3
        out[name] = {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90))}
    return out


def wall(cmd: list[str], repeat: int, env=None) -> float:
    """Median wall-clock seconds of ``cmd`` (a fresh process each time)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env or ENV)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {proc.stderr.strip()[-300:]}")
    return statistics.median(times)


KERAS_SCRIPT = """
import sys
import numpy as np, tensorflow as tf
from PIL import Image
from kerascls.runs import load_run
model = load_run(sys.argv[1]).deployable()
size = model.input_shape[1:3]
x = np.asarray(Image.open(sys.argv[2]).convert("RGB"), np.float32)[None]
x = tf.image.resize(x, size, method="bilinear", antialias=False)
print(int(np.argmax(model(x, training=False)[0])))
"""


def write_images(run_dir: Path, folder: Path, count: int) -> list[Path]:
    from PIL import Image

    from kerascls.runs import load_run

    x = load_run(run_dir).dataset().x_test[:count]
    files = []
    for i, img in enumerate(x):
        files.append(folder / f"{i:03d}.png")
        Image.fromarray(np.floor(img + 0.5).astype(np.uint8)).save(files[-1])
    return files


def runner_benchmark(cmd_prefix: list[str], model: Path, folder: Path, runs: int) -> dict:
    proc = subprocess.run([*cmd_prefix, str(model), str(folder), "--json", "--benchmark",
                           str(runs)], capture_output=True, text=True, env=ENV)
    if proc.returncode != 0:
        raise RuntimeError(f"runner failed: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["benchmark"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", help="reuse this run instead of training one")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--runs", type=int, default=300, help="timed invocations per figure")
    p.add_argument("--cold-repeats", type=int, default=5)
    p.add_argument("--emulated", action="store_true",
                   help="also time the runner under qemu arm64 emulation (edge/emulate_pi.sh)")
    p.add_argument("--work-dir", default=str(REPO / "runs" / "benchmarks"))
    p.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)

    from kerascls.export import export_run

    work = Path(args.work_dir)
    run_dir = Path(args.run_dir) if args.run_dir else train(args.model, args.image_size,
                                                            args.epochs, work)
    tdir = run_dir / "tflite"
    name = json.loads((run_dir / "metadata.json").read_text())["model_name"]
    files = {v: tdir / f"{name}-{v}.tflite" for v in VARIANTS}
    if not all(f.is_file() for f in files.values()):
        export_run(run_dir, ",".join(f"tflite-{v}" for v in VARIANTS), report=False)

    results: dict = {"model": name, "run": str(run_dir), "variants": {}}
    print(f"\n{name}: invoke() latency, batch 1, {args.runs} runs (this CPU)")
    print(f"{'variant':<9} {'size KiB':>9} {'size/f32':>8} {'p50 1thr':>9} {'p90 1thr':>9} "
          f"{'p50 2thr':>9} {'p90 2thr':>9}")
    size32 = files["float32"].stat().st_size
    lat1, lat2 = invoke_latencies(files, 1, args.runs), invoke_latencies(files, 2, args.runs)
    for v, f in files.items():
        one, two = lat1[v], lat2[v]
        size = f.stat().st_size
        results["variants"][v] = {"size_bytes": size, "size_vs_float32": size / size32,
                                  "threads_1": one, "threads_2": two}
        print(f"{v:<9} {size / 1024:>9.1f} {size / size32:>8.3f} {one['p50_ms']:>9.3f} "
              f"{one['p90_ms']:>9.3f} {two['p50_ms']:>9.3f} {two['p90_ms']:>9.3f}")
    r = results["variants"]
    for t in ("threads_1", "threads_2"):
        results[f"int8_over_float32_p50_{t}"] = r["int8"][t]["p50_ms"] / r["float32"][t]["p50_ms"]
    print(f"int8 / float32 p50 latency: {results['int8_over_float32_p50_threads_1']:.3f} "
          f"(1 thread), {results['int8_over_float32_p50_threads_2']:.3f} (2 threads); "
          "target <= 0.7")

    with tempfile.TemporaryDirectory(prefix="kerascls-bench-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        images = write_images(run_dir, folder, 20)
        runner = [sys.executable, str(RUNNER)]
        cold = {v: wall([*runner, str(files[v]), str(images[0])], args.cold_repeats)
                for v in ("float32", "int8")}
        cold_tf_lite = wall([*runner, str(files["float32"]), str(images[0]), "--runtime",
                             "tensorflow"], max(1, args.cold_repeats // 2))
        script = Path(tmp) / "keras_predict.py"
        script.write_text(KERAS_SCRIPT)
        cold_keras = wall([sys.executable, str(script), str(run_dir), str(images[0])],
                          max(1, args.cold_repeats // 2))
        results["cold_start_s"] = {"runner_ai_edge_litert_float32": cold["float32"],
                                   "runner_ai_edge_litert_int8": cold["int8"],
                                   "runner_tensorflow_lite_float32": cold_tf_lite,
                                   "keras_model_keras": cold_keras}
        print("\ncold start to first prediction (fresh process, wall clock to exit, median):")
        print(f"  run_tflite.py, ai_edge_litert, float32: {cold['float32']:.3f} s; int8: "
              f"{cold['int8']:.3f} s (target < 1 s)")
        print(f"  run_tflite.py --runtime tensorflow:      {cold_tf_lite:.3f} s")
        print(f"  Keras: load the run's model and predict: {cold_keras:.3f} s")

        print("\nrunner per-image cost against invoke() alone (1 thread, p50):")
        results["overhead"] = {}
        for v in ("float32", "int8"):
            b = runner_benchmark(runner, files[v], folder, args.runs)
            bare = r[v]["threads_1"]["p50_ms"]
            single = b["end_to_end_p50_ms"] / b["invoke_p50_ms"] - 1
            results["overhead"][v] = {**b, "single_image_overhead": single,
                                      "folder_overhead_vs_bare_invoke":
                                          b["per_image_p50_ms"] / bare - 1}
            print(f"  {v:<8} folder: {b['per_image_p50_ms']:.3f} ms per image, invoke "
                  f"{b['invoke_p50_ms']:.3f} ms: overhead {b['overhead_vs_invoke']:.1%} "
                  f"(target < 10%); single image, nothing overlapped: "
                  f"{b['end_to_end_p50_ms']:.3f} ms ({single:+.1%})")

        if args.emulated:
            print("\nEMULATED arm64 (qemu-user Cortex-A72, Debian 12, Python 3.11): emulator "
                  "timings, not Raspberry Pi timings")
            subprocess.run(["bash", str(EMULATE), "setup"], check=True)
            emu = ["bash", str(EMULATE), "run"]
            results["emulated"] = {}
            for v in VARIANTS:
                b = runner_benchmark(emu, files[v], folder, 30)
                results["emulated"][v] = b
                print(f"  {v:<8} invoke p50 {b['invoke_p50_ms']:.2f} ms, end-to-end p50 "
                      f"{b['end_to_end_p50_ms']:.2f} ms, {b['throughput_images_per_s']:.1f} "
                      f"images/s, first prediction {b['first_prediction_s']:.2f} s after "
                      "model load began")
            cold_emu = wall([*emu, str(files["int8"]), str(images[0])], 3)
            results["emulated"]["cold_start_int8_s"] = cold_emu
            print(f"  cold start (int8, process wall clock): {cold_emu:.2f} s")
    print("\n" + json.dumps(results))
    if args.json_out:
        from kerascls.fileio import atomic_write_json

        atomic_write_json(args.json_out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
