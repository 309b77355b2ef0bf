"""Training and searching on several devices or machines (``--strategy``).

``--strategy`` selects a ``tf.distribute`` strategy (:func:`create_strategy`):

* ``default`` — one device, TensorFlow's default strategy (the plain code path);
* ``mirrored`` — ``tf.distribute.MirroredStrategy`` over every GPU of the machine (or, without
  GPUs, over the logical CPU devices made by :func:`configure_logical_cpus`, e.g. in tests);
* ``multi_worker`` — ``tf.distribute.MultiWorkerMirroredStrategy`` over several machines
  described by the ``TF_CONFIG`` environment variable (:func:`read_tf_config`); each machine
  runs the same command. It must be created before TensorFlow runs anything else.

With ``R`` replicas in sync the computation equals the one-device computation on the same
global batch (up to float rounding; a float32 step can amplify rounding a lot: MSINet's first
step on a batch of 8 changes its gradients by up to 40% when the input moves by 1e-6, so such
comparisons are made in float64, where they agree to about 1e-11):

* **Batches.** Every worker builds the same global PK batch (``P`` identities × ``K``, the
  sampler is seeded) and keeps the part of its replicas (:func:`distribute_batches`): the
  global batch is cut into ``R`` contiguous parts of ``P / R`` whole identities (the sampler
  groups each identity contiguously), so ``P % R == 0`` is required
  (:func:`check_identities_per_replica`). A visible–infrared batch (``[visible P·K,
  infrared P·K]``, identity aligned) is re-arranged first so that each replica receives its own
  visible half followed by the matching infrared half (:func:`replica_parts`), which is what
  the switchable BN's mode 0 expects on each replica. Cost: each worker reads and augments the
  whole global batch and drops the other workers' parts (simple and exactly reproducible;
  the reading work grows with the number of machines, not with the number of GPUs).
* **Losses.** Each replica computes its model outputs, then all-gathers them
  (:func:`all_gather_batch`, which also undoes the visible–infrared re-arrangement) and
  evaluates the objective on the *global* batch: batch-hard triplet mining, the cross-modality
  terms and the classification mean are exactly the one-device ones. Each replica
  back-propagates ``loss / R``; the all-gather's gradient sums the replicas' contributions and
  the optimisers sum the replicas' gradients, so the update is the one-device update. Cost: one
  gather of the outputs and labels per step and one for its gradient (all-reduces of
  ``B × (d + classes)`` floats, small next to the backbone) and the ``O(B²)`` distance matrix
  evaluated on every replica. Terms whose model output only exists per replica (MSINet's SAM
  scores: the batch is its own kernel inside the model) are computed on each replica's part and
  averaged.
* **Metrics.** The losses reported per step are global: gathered terms are identical on every
  replica, per-replica terms are averaged (the trainer's ``strategy.reduce``).
* **Batch normalisation.** :mod:`reid_tf.models.sync_bn` makes every BN layer of a model
  compute its training statistics over the global batch with :func:`cross_replica_moments`
  (one small all-reduce of the sums, squared sums and counts per BN layer and pass, shifted by
  the moving mean for accuracy), so BN statistics equal the one-device ones.
* **Cluster memories and other state.** Values updated inside a step from synchronised inputs
  (BN statistics, weight EMA, the search's cluster memories fed with all-gathered features in
  global batch order) stay identical on every replica.
* **Outputs.** Only the chief (``chief`` task, or worker 0) writes checkpoints and outputs; the
  other workers run the same code (collective operations need every worker) and write into a
  temporary folder that is deleted at the end (:func:`worker_output_folder`). Resuming a
  multi-worker run needs the run folder on storage every machine sees.
"""
import contextlib
import json
import os
import shutil
import tempfile

import tensorflow as tf

from reid_tf.runtime.choices import STRATEGIES
from reid_tf.runtime.errors import UsageError


class DistributionError(UsageError):
    """A bad ``--strategy`` setting: names the flag or the environment variable to fix."""


# --------------------------------------------------------------------------------------------
# Devices, TF_CONFIG and strategies
# --------------------------------------------------------------------------------------------
def configure_logical_cpus(count):
    """Split the first physical CPU into ``count`` logical devices (``/cpu:0`` ...).

    Must run before TensorFlow initialises its devices (before any op or strategy), e.g. at
    the top of a test subprocess; the mirrored strategy then uses the logical CPUs when there
    is no GPU. Returns the logical CPU devices.
    """
    count = int(count)
    if count < 1:
        raise DistributionError(f"configure_logical_cpus: count must be >= 1, got {count}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as error:
        raise DistributionError(
            f"configure_logical_cpus({count}) must run before TensorFlow initialises its "
            f"devices (before any TensorFlow op or strategy): {error}") from None
    return tf.config.list_logical_devices("CPU")


def read_tf_config(environ=None):
    """The ``TF_CONFIG`` of a multi-worker run, parsed and checked.

    ``TF_CONFIG`` is JSON: ``{"cluster": {"worker": ["host:port", ...], ("chief": [...])},
    "task": {"type": "worker", "index": i}}``, the same cluster on every machine and each
    machine's own task. Raises :class:`DistributionError` naming ``TF_CONFIG``.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG", "")
    if not text.strip():
        raise DistributionError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable on every machine, "
            'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' (index 1 on the second machine).')
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise DistributionError(f"TF_CONFIG is not valid JSON ({error}): {text!r}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise DistributionError(f"TF_CONFIG has no 'cluster' (job name -> list of host:port): "
                                f"{text!r}.")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(
                isinstance(address, str) and ":" in address for address in addresses):
            raise DistributionError(f"TF_CONFIG cluster job {job!r} must be a non-empty list of "
                                    f"'host:port' strings, got {addresses!r}.")
    unknown = sorted(set(cluster) - {"chief", "worker"})
    if unknown:
        raise DistributionError(f"TF_CONFIG cluster jobs {unknown}: the multi-worker strategy "
                                "uses 'worker' (and optionally one 'chief') only.")
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise DistributionError(f"TF_CONFIG 'task' must name one of the cluster's jobs "
                                f"({', '.join(cluster)}) as its 'type', got {task!r}.")
    index = task.get("index", 0)
    if isinstance(index, bool) or not isinstance(index, int) \
            or not 0 <= index < len(cluster[task["type"]]):
        raise DistributionError(f"TF_CONFIG task index {index!r} is not a position in the "
                                f"cluster's {task['type']!r} list "
                                f"(0..{len(cluster[task['type']]) - 1}).")
    return config


def create_strategy(name, devices=None):
    """The ``tf.distribute`` strategy of ``--strategy=name`` (see the module docstring).

    Args:
      name: ``default``, ``mirrored`` or ``multi_worker``.
      devices: for ``mirrored`` only, the devices to mirror on (default: every GPU; without
        GPUs, every logical CPU).
    """
    if name not in STRATEGIES:
        raise DistributionError(f"--strategy={name!r}: expected one of {', '.join(STRATEGIES)}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [device.name for device in
                       (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=list(devices))
    read_tf_config()
    return tf.distribute.MultiWorkerMirroredStrategy()


def num_replicas(strategy=None):
    """Replicas in sync (all workers together)."""
    strategy = strategy or tf.distribute.get_strategy()
    return int(strategy.num_replicas_in_sync)


def is_distributed(strategy):
    """True for a strategy other than TensorFlow's default one: its steps go through
    ``strategy.run`` (even with one replica, as a one-worker multi-worker run)."""
    return strategy is not None and type(strategy).__name__ != "_DefaultDistributionStrategy"


def describe(strategy):
    """One line naming the strategy, its replicas and devices."""
    if not is_distributed(strategy):
        return "Distribution: one device (--strategy=default)."
    kind = type(strategy).__name__
    devices = ", ".join(strategy.extended.worker_devices)
    return (f"Distribution: {kind} with {num_replicas(strategy)} replica(s) in sync"
            + (f" ({devices})" if devices else "") + ".")


def worker_task(strategy):
    """``(task_type, task_id)`` of this process (``(None, 0)`` on one machine)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def worker_position(strategy):
    """``(index, count)`` of this process among the machines of a run (the ``chief`` task
    first, then the workers in order; ``(0, 1)`` on one machine)."""
    task_type, task_id = worker_task(strategy)
    if task_type is None:
        return 0, 1
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    chiefs = len(cluster.get("chief", []))
    count = chiefs + len(cluster.get("worker", []))
    return (task_id if task_type == "chief" else chiefs + task_id), count


def is_chief(strategy):
    """Whether this process writes the outputs: the ``chief`` task, or worker 0 of a cluster
    without a chief, or the only process of a one-machine run."""
    task_type, task_id = worker_task(strategy)
    if task_type is None or task_type == "chief":
        return True
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_output_folder(folder, strategy):
    """Where this process writes: ``folder`` on the chief, a fresh temporary folder on the
    other workers (remove it with :func:`remove_worker_output_folder`)."""
    if is_chief(strategy):
        return folder
    task_type, task_id = worker_task(strategy)
    return tempfile.mkdtemp(prefix=f"reid_tf_{task_type}{task_id}_")


def remove_worker_output_folder(folder, strategy):
    """Delete a non-chief worker's temporary output folder (nothing on the chief)."""
    if not is_chief(strategy) and folder and os.path.isdir(folder):
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Per-replica batches
# --------------------------------------------------------------------------------------------
def check_identities_per_replica(identity_num_per_batch, strategy, flag="--identity_num_per_batch"):
    """Raise :class:`DistributionError` unless the ``P`` identities of a batch split evenly over
    the replicas (each replica receives ``P / R`` whole identities)."""
    replicas = num_replicas(strategy)
    if int(identity_num_per_batch) % replicas:
        raise DistributionError(
            f"{flag}={identity_num_per_batch} does not split over the {replicas} replicas of "
            f"--strategy ({type(strategy).__name__}): each replica receives whole identities, "
            f"so {flag} must be a multiple of {replicas}.")


def replica_parts(tensor, replicas, cross_modality=False):
    """Cut a global batch (axis 0) into ``replicas`` contiguous parts, stacked on a new axis 0.

    Plain batches: ``(R·n, ...) → (R, n, ...)``. Visible–infrared batches ``[V, I]`` with
    ``V = [V_0 .. V_{R-1}]`` and ``I`` likewise: ``(2·R·n, ...) → (R, 2·n, ...)``, part ``r``
    being ``[V_r, I_r]``.
    """
    tensor = tf.convert_to_tensor(tensor)
    rest = tf.shape(tensor)[1:]
    if not cross_modality:
        return tf.reshape(tensor, tf.concat([[replicas, -1], rest], axis=0))
    halves = tf.reshape(tensor, tf.concat([[2, replicas, -1], rest], axis=0))
    rank = len(tensor.shape) + 2
    swapped = tf.transpose(halves, [1, 0] + list(range(2, rank)))
    return tf.reshape(swapped, tf.concat([[replicas, -1], rest], axis=0))


def global_order(gathered, replicas, cross_modality=False):
    """Inverse of :func:`replica_parts` on replica parts concatenated in replica order:
    ``[V_0, I_0, V_1, I_1, ...] → [V_0, V_1, ..., I_0, I_1, ...]`` (identity for plain
    batches)."""
    if not cross_modality or replicas == 1:
        return gathered
    rest = tf.shape(gathered)[1:]
    parts = tf.reshape(gathered, tf.concat([[replicas, 2, -1], rest], axis=0))
    rank = len(gathered.shape) + 2
    swapped = tf.transpose(parts, [1, 0] + list(range(2, rank)))
    return tf.reshape(swapped, tf.concat([[-1], rest], axis=0))


def distribute_batches(strategy, dataset_fn, cross_modality=False):
    """A distributed dataset of per-replica ``(images, labels)`` batches.

    ``dataset_fn()`` must give the same global batches on every worker (``(images, labels)``,
    axis 0 the global batch). Each worker keeps the parts of its own replicas
    (:func:`replica_parts`), in replica order. Iterating the result gives ``PerReplica``
    values for ``strategy.run``.
    """
    replicas = num_replicas(strategy)

    def make(context):
        per_worker = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * per_worker

        def split(images, labels):
            return (replica_parts(images, replicas, cross_modality)[first:first + per_worker],
                    replica_parts(labels, replicas, cross_modality)[first:first + per_worker])

        return dataset_fn().map(split).unbatch()

    return strategy.distribute_datasets_from_function(make)


def split_batch(strategy, images, labels, cross_modality=False):
    """Per-replica values of one global ``(images, labels)`` batch (same cut as
    :func:`distribute_batches`); for batches drawn one at a time (the search's valid stream)."""
    replicas = num_replicas(strategy)
    image_parts = replica_parts(images, replicas, cross_modality)
    label_parts = replica_parts(labels, replicas, cross_modality)

    def value(context):
        index = context.replica_id_in_sync_group
        return image_parts[index], label_parts[index]

    return strategy.experimental_distribute_values_from_function(value)


# --------------------------------------------------------------------------------------------
# Cross-replica helpers (called inside strategy.run)
# --------------------------------------------------------------------------------------------
def _replica_context():
    """The replica context when several replicas run in sync, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def all_gather_batch(structure, cross_modality=False):
    """All-gather every tensor of ``structure`` along axis 0 in global batch order.

    Inside ``strategy.run`` with several replicas, each replica gets the whole batch (replica
    parts in replica order, visible–infrared parts put back as ``[all visible, all infrared]``,
    see :func:`global_order`); the gradient flows back to every replica's own part, summed
    over the replicas. Elsewhere ``structure`` is returned unchanged. The parts must have the
    same shape on every replica.

    The gather is an all-reduce (sum) of the parts placed in their replica's slot of a
    zero tensor: exact (``x + 0 = x``), differentiable (the gradient of an all-reduce is an
    all-reduce), and it works on every strategy (``ReplicaContext.all_gather`` needs tensors
    with device placements, which a multi-worker step does not have).
    """
    context = _replica_context()
    if context is None:
        return structure
    replicas = int(context.num_replicas_in_sync)
    index = tf.reshape(tf.cast(context.replica_id_in_sync_group, tf.int32), [1, 1])

    def slots(tensor):
        tensor = tf.convert_to_tensor(tensor)
        shape = tf.concat([[replicas], tf.shape(tensor)], axis=0)
        return tf.scatter_nd(index, tensor[tf.newaxis], shape)

    tensors = [tf.convert_to_tensor(tensor) for tensor in tf.nest.flatten(structure)]
    integer = [tensor.dtype.is_integer for tensor in tensors]
    # Labels travel as float64 (exact below 2**53; the collectives reduce floats everywhere).
    parts = [slots(tf.cast(tensor, tf.float64) if is_integer else tensor)
             for tensor, is_integer in zip(tensors, integer)]
    # One all-reduce per dtype (a multi-worker all-reduce packs its tensors together).
    totals = [None] * len(parts)
    for dtype in sorted({part.dtype for part in parts}, key=lambda dtype: dtype.name):
        positions = [i for i, part in enumerate(parts) if part.dtype == dtype]
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [parts[i] for i in positions])
        for position, total in zip(positions, reduced):
            totals[position] = total
    gathered = []
    for total, tensor, is_integer in zip(totals, tensors, integer):
        flat = tf.reshape(total, tf.concat([[-1], tf.shape(tensor)[1:]], axis=0))
        flat = global_order(flat, replicas, cross_modality)
        gathered.append(tf.cast(flat, tensor.dtype) if is_integer else flat)
    return tf.nest.pack_sequence_as(structure, gathered)


def cross_replica_moments(inputs, axes, keepdims=False, shift=None):
    """Mean and (biased) variance of ``inputs`` over ``axes`` and over every replica, and the
    number of values per channel they cover.

    With several replicas in sync: one all-reduce of the per-replica sums of ``x - c`` and
    ``(x - c)²`` and of the counts, where the shift ``c`` (``shift``, e.g. the BN layer's moving
    mean, the same on every replica; default 0) keeps ``E[(x-c)²] - E[x-c]²`` accurate when
    ``c`` is near the mean. Gradients flow through the all-reduce (the mean and variance are
    exact functions of the inputs; ``c`` is a constant). Otherwise ``tf.nn.moments``.
    """
    inputs = tf.convert_to_tensor(inputs)
    shape = tf.shape(inputs)
    local_count = tf.cast(tf.reduce_prod(tf.gather(shape, axes)), inputs.dtype)
    context = _replica_context()
    if context is None:
        mean, variance = tf.nn.moments(inputs, axes, keepdims=keepdims)
        return mean, variance, local_count
    rank = len(inputs.shape)
    center = tf.zeros([], inputs.dtype) if shift is None else tf.stop_gradient(
        tf.reshape(tf.cast(shift, inputs.dtype),
                   [1 if axis in axes else -1 for axis in range(rank)]))
    shifted = inputs - center
    sums = tf.reduce_sum(shifted, axes, keepdims=True)
    squares = tf.reduce_sum(tf.square(shifted), axes, keepdims=True)
    counts = tf.fill(tf.shape(sums), local_count)
    # One collective per call (and one for its gradient): sums, squares and counts packed.
    total = context.all_reduce(tf.distribute.ReduceOp.SUM,
                               tf.stack([sums, squares, counts], axis=0))
    count = total[2]
    shifted_mean = total[0] / count
    variance = tf.maximum(total[1] / count - tf.square(shifted_mean), 0.0)
    mean = shifted_mean + center
    if not keepdims:
        mean = tf.squeeze(mean, axes)
        variance = tf.squeeze(variance, axes)
    return mean, variance, tf.reshape(count, [-1])[0]


def mean_over_workers(strategy, value):
    """Mean of a host value over every worker (eager; a collective on multi-worker runs)."""
    value = tf.convert_to_tensor(value, tf.float32)
    per_replica = strategy.experimental_distribute_values_from_function(lambda _: value)
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)


@contextlib.contextmanager
def keras_inputs_keep_batch_size():
    """Inside a multi-replica ``strategy.scope()``, tf-keras divides the ``batch_size`` of
    every ``keras.Input(..., batch_size=n)`` by the number of replicas (it reads it as a
    global batch size). Models whose fixed-size inputs are not batches (the search network's
    ``alpha`` input, 12 × 4) are built inside this context, which turns that division off (by
    answering tf-keras' own question, ``global_batch_size_supported``, with no)."""
    from tf_keras.src.engine import input_layer

    utilities = input_layer.distributed_training_utils
    saved = utilities.global_batch_size_supported
    utilities.global_batch_size_supported = lambda strategy: False
    try:
        yield
    finally:
        utilities.global_batch_size_supported = saved
