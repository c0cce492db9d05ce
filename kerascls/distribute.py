"""Scaling out: device choice, distribution strategies, mixed precision and the learning-rate rule.

kerascls scales on the engines each Keras backend already has, never on its own:

* TensorFlow backend: ``--strategy none`` trains on one device; ``mirrored`` is
  ``tf.distribute.MirroredStrategy`` over the local GPUs, or over ``--cpu-devices N`` logical CPU
  devices; ``multiworker`` is ``tf.distribute.MultiWorkerMirroredStrategy`` with the cluster read
  from the ``TF_CONFIG`` environment variable.
* JAX backend: ``--strategy data-parallel`` is ``keras.distribution.DataParallel`` over the local
  devices (the GPUs, or ``--cpu-devices N`` XLA CPU devices).
* ``--device auto|cpu|gpu`` picks the device kind; ``--device gpu`` without a GPU is an error.
* ``--batch-size`` is the **global** batch: each step consumes ``batch_size`` examples in total,
  split evenly over the replicas, so a run means the same optimisation problem on any hardware.
* The learning rate follows the rule ``--lr-scaling`` names, relative to ``--lr-base-batch``
  (the global batch that ``--learning-rate`` was tuned for): ``linear`` (Goyal et al. 2017,
  https://arxiv.org/abs/1706.02677) multiplies it by ``batch_size / lr_base_batch``, ``sqrt`` by
  the square root of that ratio, ``none`` keeps it as given. The factor is 1 at the defaults.
* ``--mixed-precision mixed_float16|mixed_bfloat16`` trains under that Keras dtype policy; the
  classifier's softmax is float32 in every model, and ``model.keras`` is rewritten as a float32
  model after training, so evaluation and every export read a float32 model.

Keras 3.15 trains under ``tf.distribute`` with two defects that this module corrects while a
strategy trains (and only then): its trainer pulls one batch through a new iterator before
training to build the model (so each epoch sees the permutation meant for the next one, and
under ``MultiWorkerMirroredStrategy`` the mean of that batch fails), and it averages scalar logs
across workers along an axis they do not have (keras-team/keras#20585,
tensorflow/tensorflow#72388). The corrected build reads shapes from the dataset's
``element_spec``, and scalar logs are averaged with ``axis=None``.

Call :func:`setup` before anything places an operation on a device: logical CPU devices, hidden
GPUs and ``MultiWorkerMirroredStrategy`` can only be configured before TensorFlow starts its
runtime.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from kerascls.choices import DEVICES, MIXED_PRECISION, STRATEGIES
from kerascls.errors import UserError
from kerascls.training.schedule import lr_factor

BACKEND_STRATEGIES = {
    "tensorflow": ("none", "mirrored", "multiworker"),
    "jax": ("none", "data-parallel"),
    "torch": ("none",),
}
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


# -- TF_CONFIG ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Cluster:
    """A validated ``TF_CONFIG``: the cluster's addresses and this process's task.

    Attributes:
        jobs: job name (``worker``, ``chief``) -> list of ``host:port`` addresses.
        task_type: this process's job name.
        task_index: this process's index within its job.
    """

    jobs: dict[str, list[str]]
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(v) for v in self.jobs.values())

    @property
    def is_chief(self) -> bool:
        """The chief writes the run directory and the exports; the other workers only train."""
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def task(self) -> str:
        return f"{self.task_type}:{self.task_index}"


def _check_address(job: str, i: int, address: Any) -> None:
    where = f"TF_CONFIG cluster.{job}[{i}]"
    if not isinstance(address, str) or address.count(":") < 1:
        raise UserError(f"{where} must be a 'host:port' string. Received: {address!r}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"{where} must be 'host:port' with a port in 1..65535. "
                        f"Received: {address!r}")


def parse_tf_config(raw: str | None) -> Cluster:
    """Validate the ``TF_CONFIG`` text that ``MultiWorkerMirroredStrategy`` will read.

    A wrong ``TF_CONFIG`` otherwise shows up as a worker waiting forever for peers that will
    never come, so every field is checked here and reported in one line.

    Args:
        raw: the value of the ``TF_CONFIG`` environment variable (None when unset).

    Returns:
        The :class:`Cluster` it describes.

    Raises:
        UserError: when it is unset, not JSON, or not a cluster of ``worker`` (and optionally one
            ``chief``) addresses with a ``task`` inside it.
    """
    if raw is None or not raw.strip():
        raise UserError("--strategy multiworker needs the TF_CONFIG environment variable, one per "
                        f"worker, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (see docs/scaling.md)")
    try:
        conf = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON: {exc.msg} at character {exc.pos}. "
                        f"Expected e.g. {TF_CONFIG_EXAMPLE}") from None
    if not isinstance(conf, dict):
        raise UserError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task'. "
                        f"Received: {type(conf).__name__}")
    unknown = sorted(set(conf) - {"cluster", "task", "environment", "rpc_layer"})
    if unknown:
        raise UserError(f"TF_CONFIG has unknown keys {', '.join(unknown)}; "
                        f"expected 'cluster' and 'task'")
    cluster, task = conf.get("cluster"), conf.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise UserError(f"TF_CONFIG needs a 'cluster' object such as "
                        f"{{\"worker\": [\"host1:12345\", \"host2:12345\"]}}. Received: {cluster!r}")
    for job in cluster:
        if job in ("ps", "evaluator"):
            raise UserError(f"TF_CONFIG cluster.{job}: MultiWorkerMirroredStrategy takes only "
                            f"'worker' and 'chief' jobs (parameter servers and evaluators are "
                            f"not supported)")
        if job not in ("worker", "chief"):
            raise UserError(f"TF_CONFIG cluster has an unknown job '{job}'; "
                            f"allowed: worker, chief")
    jobs: dict[str, list[str]] = {}
    seen: set[str] = set()
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise UserError(f"TF_CONFIG cluster.{job} must be a non-empty list of 'host:port'. "
                            f"Received: {addresses!r}")
        if job == "chief" and len(addresses) != 1:
            raise UserError(f"TF_CONFIG cluster.chief must hold exactly one address. "
                            f"Received: {len(addresses)}")
        for i, address in enumerate(addresses):
            _check_address(job, i, address)
            if address in seen:
                raise UserError(f"TF_CONFIG lists {address} twice; every task needs its own port")
            seen.add(address)
        jobs[job] = list(addresses)
    if not isinstance(task, dict):
        raise UserError(f"TF_CONFIG needs a 'task' object such as "
                        f"{{\"type\": \"worker\", \"index\": 0}}. Received: {task!r}")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in jobs:
        raise UserError(f"TF_CONFIG task.type must be one of the cluster's jobs "
                        f"({', '.join(jobs)}). Received: {task_type!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
        raise UserError(f"TF_CONFIG task.index must be an integer in 0..{len(jobs[task_type]) - 1} "
                        f"for job '{task_type}'. Received: {index!r}")
    return Cluster(jobs, task_type, index)


# -- backends and devices -------------------------------------------------------------------------
def current_backend() -> str:
    """The Keras backend this process will use, found without importing Keras if possible."""
    if "keras" in sys.modules:
        import keras

        return keras.backend.backend()
    name = os.environ.get("KERAS_BACKEND")
    if not name:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            name = json.loads(Path(home, "keras.json").read_text()).get("backend")
        except (OSError, ValueError, AttributeError):
            name = None
    return name or "tensorflow"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@dataclasses.dataclass
class Placement:
    """Where and how a run trains: backend, strategy, devices, replicas, precision, batch rule.

    Made by :func:`setup`; :meth:`scope` wraps model building, compiling and fitting, and
    :meth:`metadata` is what the run directory records.
    """

    backend: str
    strategy_name: str
    device: str
    device_kind: str
    devices: list[str]
    device_names: list[str]
    mixed_precision: str
    global_batch: int
    lr_scaling: str
    lr_base_batch: int
    learning_rate: float = 0.0
    lr_factor: float = 1.0
    cluster: Cluster | None = None
    strategy: Any = None
    keras_distribution: Any = None
    run_dir: Path | None = None

    @property
    def replicas(self) -> int:
        """Replicas in sync: the number of devices a global batch is split over."""
        if self.strategy is not None:
            return int(self.strategy.num_replicas_in_sync)
        return len(self.devices) if self.keras_distribution is not None else 1

    @property
    def workers(self) -> int:
        return self.cluster.num_workers if self.cluster else 1

    @property
    def is_chief(self) -> bool:
        return self.cluster.is_chief if self.cluster else True

    def run_directory(self, path: Path) -> Path:
        """The chief writes ``path``; every other worker writes ``path.<job>-<index>`` beside it.

        Keras' checkpoint callbacks are not multi-worker aware, so workers that share a
        filesystem must not write the same files.
        """
        path = Path(path)
        if not self.is_chief:
            path = path.with_name(f"{path.name}.{self.cluster.task_type}-{self.cluster.task_index}")
        self.run_dir = path
        return path

    @contextlib.contextmanager
    def scope(self):
        """Build, compile and fit inside this: the strategy scope, the dtype policy, the fixes."""
        import keras

        previous_policy = keras.config.dtype_policy()
        with contextlib.ExitStack() as stack:
            if self.strategy is not None:
                if self.cluster is not None and self.run_dir is not None:
                    align_backups(self.strategy, self.run_dir / "backup", self.cluster.task)
                stack.enter_context(_tf_distribute_fixes())
                stack.enter_context(self.strategy.scope())
            if self.keras_distribution is not None:
                stack.enter_context(_keras_distribution(self.keras_distribution))
            if self.mixed_precision != "off":
                keras.config.set_dtype_policy(self.mixed_precision)
            try:
                yield self
            finally:
                keras.config.set_dtype_policy(previous_policy)

    def finish(self, model_path: Path) -> None:
        """After training: rewrite a mixed-precision ``model.keras`` as a float32 model."""
        if self.mixed_precision != "off" and Path(model_path).is_file():
            save_float32(model_path)

    def metadata(self) -> dict[str, Any]:
        """The manifest entries: ``devices``, ``replicas`` and the ``distribution`` details."""
        per_replica = self.global_batch / self.replicas
        return {
            "devices": list(self.devices),
            "replicas": self.replicas,
            "distribution": {
                "backend": self.backend,
                "strategy": self.strategy_name,
                "device": self.device,
                "device_kind": self.device_kind,
                "device_names": list(self.device_names),
                "workers": self.workers,
                "task": self.cluster.task if self.cluster else None,
                "cluster": self.cluster.jobs if self.cluster else None,
                "mixed_precision": self.mixed_precision,
                "global_batch_size": self.global_batch,
                "per_replica_batch_size": int(per_replica) if per_replica.is_integer()
                else round(per_replica, 3),
                "lr_scaling": self.lr_scaling,
                "lr_base_batch": self.lr_base_batch,
                "lr_factor": round(self.lr_factor, 6),
                "learning_rate": self.learning_rate,
            },
        }


def setup(cfg) -> Placement:
    """Check the scaling options, configure the devices and create the strategy.

    Must run before anything else in the process uses a device.

    Args:
        cfg: the resolved :class:`kerascls.config.Config`.

    Returns:
        The :class:`Placement` the run trains under.

    Raises:
        UserError: for a strategy the backend does not have, a bad ``TF_CONFIG``, ``--device gpu``
            without a GPU, or options that contradict each other.
    """
    t = cfg.train
    backend = current_backend()
    _check_options(t, backend)
    cluster = parse_tf_config(os.environ.get("TF_CONFIG")) if t.strategy == "multiworker" else None
    if backend == "torch" and t.device != "auto" and "keras" not in sys.modules:
        # Keras' torch backend picks its device when it is imported.
        os.environ["KERAS_TORCH_DEVICE"] = {"cpu": "cpu", "gpu": "cuda"}[t.device]
    factor = lr_factor(t)  # every engine applies the same rule (kerascls.training.schedule)
    if backend == "tensorflow":
        placement = _setup_tensorflow(t, cluster)
    elif backend == "jax":
        placement = _setup_jax(t)
    else:
        placement = _setup_torch(t)
    placement.cluster = cluster
    placement.lr_factor = factor
    placement.learning_rate = t.learning_rate * factor
    if placement.replicas > 1 and t.batch_size < placement.replicas:
        raise UserError(f"--batch-size {t.batch_size} is the global batch; it must be at least "
                        f"the number of replicas ({placement.replicas})")
    if abs(factor - 1.0) > 1e-12:
        print(f"learning rate {t.learning_rate:g} x {factor:g} = {placement.learning_rate:g} for the "
              f"global batch {t.batch_size} (--lr-scaling {t.lr_scaling}, --lr-base-batch "
              f"{t.lr_base_batch}; --lr-scaling none keeps it as given)", file=sys.stderr)
    return placement


def _check_options(t, backend: str) -> None:
    if backend not in BACKEND_STRATEGIES:
        raise UserError(f"unknown Keras backend '{backend}'; kerascls runs on "
                        f"{', '.join(BACKEND_STRATEGIES)}")
    for name, value, allowed in (("strategy", t.strategy, STRATEGIES), ("device", t.device, DEVICES),
                                 ("mixed-precision", t.mixed_precision, MIXED_PRECISION)):
        if value not in allowed:
            raise UserError(f"--{name} must be one of {', '.join(allowed)}. Received: {value}")
    allowed = BACKEND_STRATEGIES[backend]
    if t.strategy not in allowed:
        fits = [f"{s} ({b})" for b, ss in BACKEND_STRATEGIES.items() for s in ss
                if s == t.strategy]
        raise UserError(f"--strategy {t.strategy} does not run on the {backend} backend "
                        f"(it is for {', '.join(fits) or 'no backend'}); on {backend} use one of "
                        f"{', '.join(allowed)}")
    if t.cpu_devices < 0:
        raise UserError(f"--cpu-devices must be >= 0. Received: {t.cpu_devices}")
    if t.cpu_devices:
        if t.strategy not in ("mirrored", "data-parallel"):
            raise UserError(f"--cpu-devices {t.cpu_devices} splits the CPU for --strategy mirrored "
                            f"or data-parallel; it has no use with --strategy {t.strategy}")
        if t.device == "gpu":
            raise UserError("--cpu-devices trains on logical CPU devices; it contradicts "
                            "--device gpu")


def _runtime_started_error(what: str) -> UserError:
    return UserError(f"{what} must be set before TensorFlow starts its runtime; run "
                     f"python -m kerascls.train in a fresh process")


def _setup_tensorflow(t, cluster: Cluster | None) -> Placement:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if t.device == "gpu" and not gpus:
        raise UserError("--device gpu: TensorFlow sees no GPU (tf.config.list_physical_devices"
                        "('GPU') is empty); use --device cpu or --device auto")
    use_gpu = bool(gpus) and t.device != "cpu" and not t.cpu_devices
    try:
        if gpus and not use_gpu:
            tf.config.set_visible_devices([], "GPU")
        if t.cpu_devices:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(t.cpu_devices)])
    except RuntimeError:
        logical = tf.config.list_logical_devices("CPU")
        if t.cpu_devices and len(logical) != t.cpu_devices:
            raise _runtime_started_error(f"--cpu-devices {t.cpu_devices}") from None
        if gpus and not use_gpu and tf.config.list_logical_devices("GPU"):
            raise _runtime_started_error("--device cpu") from None

    strategy = None
    kind = "GPU" if use_gpu else "CPU"
    if t.strategy == "mirrored":
        if use_gpu:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        elif t.cpu_devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")][: t.cpu_devices]
        else:
            raise UserError("--strategy mirrored found no GPU to mirror over; add --cpu-devices N "
                            "to mirror over N logical CPU devices")
        strategy = tf.distribute.MirroredStrategy(devices)
        devices = list(strategy.extended.worker_devices)
    elif t.strategy == "multiworker":
        try:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"--strategy multiworker could not start from TF_CONFIG "
                            f"({cluster.task}): {first}") from None
        devices = list(strategy.extended.worker_devices)
    else:
        devices = [d.name for d in tf.config.list_logical_devices(kind)][:1]
    if use_gpu:
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(details.get("device_name", gpu.name))
    else:
        names = [cpu_name()]
    return Placement("tensorflow", t.strategy, t.device, kind, devices, names, t.mixed_precision,
                     t.batch_size, t.lr_scaling, t.lr_base_batch, strategy=strategy)


def _setup_jax(t) -> Placement:
    import jax

    if t.cpu_devices:
        try:
            jax.config.update("jax_num_cpu_devices", t.cpu_devices)
        except (AttributeError, RuntimeError):
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = (f"{flags} --xla_force_host_platform_device_count="
                                       f"{t.cpu_devices}").strip()
    if t.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if t.device == "gpu" and not gpus:
        raise UserError("--device gpu: JAX sees no GPU (jax.devices('gpu') fails); install "
                        "jax[cuda] or use --device cpu")
    if t.device == "cpu" and jax.default_backend() != "cpu":
        raise UserError("--device cpu must be set before JAX starts; run python -m "
                        "kerascls.train in a fresh process")
    use_gpu = bool(gpus) and not t.cpu_devices and t.device != "cpu"
    devices = gpus if use_gpu else jax.devices("cpu")
    distribution = None
    if t.strategy == "data-parallel":
        if t.cpu_devices and len(devices) != t.cpu_devices:
            raise UserError(f"--cpu-devices {t.cpu_devices} must be set before JAX starts; run "
                            f"python -m kerascls.train in a fresh process")
        if len(devices) < 2 and not use_gpu:
            raise UserError("--strategy data-parallel found one CPU device; add --cpu-devices N "
                            "to split the CPU into N devices")
        if t.batch_size % len(devices):
            raise UserError(f"--strategy data-parallel shards each batch over {len(devices)} "
                            f"devices: --batch-size must be a multiple of {len(devices)}. "
                            f"Received: {t.batch_size}")
        distribution = _even_data_parallel(devices)
    else:
        devices = devices[:1]
    kind = "GPU" if use_gpu else "CPU"
    names = sorted({getattr(d, "device_kind", str(d)) for d in devices}) if use_gpu \
        else [cpu_name()]
    return Placement("jax", t.strategy, t.device, kind, [str(d) for d in devices], names,
                     t.mixed_precision, t.batch_size, t.lr_scaling, t.lr_base_batch,
                     keras_distribution=distribution)


def _setup_torch(t) -> Placement:
    import torch

    has_cuda = torch.cuda.is_available()
    if t.device == "gpu" and not has_cuda:
        raise UserError("--device gpu: PyTorch sees no CUDA device (torch.cuda.is_available() is "
                        "False); use --device cpu or --device auto")
    wanted = {"cpu": "cpu", "gpu": "cuda"}.get(t.device)
    if wanted:
        from keras.src.backend.torch import core

        if not str(core.DEFAULT_DEVICE).startswith(wanted):
            raise UserError(f"--device {t.device} must be chosen before Keras is imported; "
                            f"run python -m kerascls.train in a fresh process")
    use_gpu = wanted == "cuda" or (wanted is None and has_cuda)
    names = [torch.cuda.get_device_name(0)] if use_gpu else [cpu_name()]
    return Placement("torch", t.strategy, t.device, "GPU" if use_gpu else "CPU",
                     ["cuda:0" if use_gpu else "cpu"], names, t.mixed_precision, t.batch_size,
                     t.lr_scaling, t.lr_base_batch)


# -- resuming several workers ---------------------------------------------------------------------
_BACKUP_STATE = ("latest.weights.h5", "training_metadata.json")


def _backup_epoch(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def align_backups(strategy, backup: Path, task: str) -> int:
    """Bring every worker's ``BackupAndRestore`` state to the same finished epoch.

    Each worker backs up into its own run directory at the end of every epoch. A kill can land
    after one worker has written epoch k and before another has, and workers that resume from
    different epochs would wait on each other forever. The workers exchange their epochs (one
    all-gather); a worker that is one epoch ahead goes back to its previous backup (Keras keeps
    it with ``double_checkpoint=True``), or to the start when that was the first epoch.

    Args:
        strategy: the ``MultiWorkerMirroredStrategy``.
        backup: this worker's backup directory.
        task: this worker's task (``worker:1``), for messages.

    Returns:
        The epoch every worker resumes after.
    """
    import numpy as np
    import tensorflow as tf

    meta = backup / "training_metadata.json"
    mine = _backup_epoch(meta)
    value = tf.constant([mine], tf.int64)

    def gather():
        return tf.distribute.get_replica_context().all_gather(value, axis=0)

    epochs = np.asarray(strategy.experimental_local_results(strategy.run(gather))[0])
    low, high = int(epochs.min()), int(epochs.max())
    if mine == low:
        return low
    previous = _backup_epoch(Path(f"{meta}.bkp")) if Path(f"{meta}.bkp").is_file() else 0
    if previous != low or (low and not (backup / f"{_BACKUP_STATE[0]}.bkp").is_file()):
        raise UserError(f"the workers' backups are at epochs {sorted(set(epochs.tolist()))} and "
                        f"{task} cannot go back to epoch {low}; delete the backup folder in "
                        f"every worker's run directory to start over")
    for name in _BACKUP_STATE:
        current, before = backup / name, backup / f"{name}.bkp"
        if low:
            before.replace(current)
        else:
            current.unlink(missing_ok=True)
            before.unlink(missing_ok=True)
    print(f"{task} was at epoch {high}, ahead of the other workers; it resumes after epoch {low} "
          f"like them", file=sys.stderr)
    return low


# -- the Keras distribution API (JAX) -------------------------------------------------------------
def _even_data_parallel(devices):
    """``keras.distribution.DataParallel`` whose batches always split evenly over the devices.

    JAX shards a batch only when the device count divides it, so the last, partial batch of an
    epoch is trimmed to a multiple of the device count (at most ``len(devices) - 1`` examples of
    that pass are left out; with reshuffling they differ each epoch).
    """
    import keras

    n = len(devices)

    class EvenDataParallel(keras.distribution.DataParallel):
        def distribute_dataset(self, dataset):
            import tensorflow as tf

            dataset = super().distribute_dataset(dataset)
            if not isinstance(dataset, tf.data.Dataset):
                return dataset

            def trim(*batch):
                size = tf.shape(tf.nest.flatten(batch)[0])[0]
                keep = size - size % n
                out = tf.nest.map_structure(lambda a: a[:keep], batch)
                return out if len(out) > 1 else out[0]

            def non_empty(*batch):
                return tf.shape(tf.nest.flatten(batch)[0])[0] > 0

            return dataset.map(trim).filter(non_empty)

    return EvenDataParallel(devices=devices)


@contextlib.contextmanager
def _keras_distribution(distribution):
    import warnings

    import keras

    previous = keras.distribution.distribution()
    keras.distribution.set_distribution(distribution)
    try:
        with warnings.catch_warnings():
            # Trimming makes the number of batches unknown until the first pass ends; Keras
            # then warns that the data "ran out" although every batch was seen.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            yield
    finally:
        keras.distribution.set_distribution(previous)


# -- Keras 3 TensorFlow trainer under tf.distribute -----------------------------------------------
@contextlib.contextmanager
def _tf_distribute_fixes():
    """Correct Keras' TensorFlow trainer for tf.distribute while a strategy trains.

    * ``_maybe_symbolic_build`` pulls a batch through a fresh iterator of the training data to
      learn its shapes: the shuffle then hands epoch k the permutation meant for epoch k + 1, and
      under ``MultiWorkerMirroredStrategy`` the mean of that batch across workers fails. The
      replacement builds from the dataset's ``element_spec`` and consumes nothing.
    * ``reduce_per_replica`` averages scalar logs across workers with ``axis=0``, which scalars do
      not have; the replacement uses ``axis=None`` for them.
    """
    try:
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:
        yield
        return
    cls = getattr(tf_trainer, "TensorFlowTrainer", None)
    original_reduce = getattr(tf_trainer, "reduce_per_replica", None)
    original_build = getattr(cls, "_maybe_symbolic_build", None)
    if original_reduce is None or original_build is None:
        yield
        return
    import tensorflow as tf

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not tf_trainer._collective_all_reduce_multi_worker(
                strategy):
            return original_reduce(values, strategy, reduction)

        def one(value):
            local = strategy.experimental_local_results(value)
            if local and isinstance(local[0], tf.Tensor) and local[0].shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original_reduce(value, strategy, reduction)

        return tf.nest.map_structure(one, values)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None and data_batch is None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    cls._maybe_symbolic_build = maybe_symbolic_build
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original_reduce
        cls._maybe_symbolic_build = original_build


# -- float32 after mixed-precision training -------------------------------------------------------
def _float32_config(node):
    if isinstance(node, dict):
        if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and \
                str(node.get("config", {}).get("name", "")).startswith("mixed_"):
            return {**node, "config": {**node["config"], "name": "float32"}}
        out = {}
        for key, value in node.items():
            if key == "dtype" and isinstance(value, str) and value.startswith("mixed_"):
                out[key] = "float32"
            else:
                out[key] = _float32_config(value)
        return out
    if isinstance(node, list):
        return [_float32_config(v) for v in node]
    return node


def save_float32(model_path: str | Path) -> None:
    """Rewrite the ``.keras`` model at ``model_path`` with every layer in float32.

    Mixed precision keeps the variables in float32, so the weights carry over unchanged; only the
    compute dtype of each layer goes back to float32.
    """
    import keras

    import kerascls.layers  # noqa: F401 - registers the custom layers
    from kerascls.fileio import atomic_path

    model = keras.saving.load_model(model_path, compile=False)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = model.__class__.from_config(_float32_config(model.get_config()))
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights())
    with atomic_path(model_path) as tmp:
        clone.save(tmp)
