"""Shared test helpers: running solution.py's job in-process with parsed flags; random
PyTorch ResNet-50 state dicts."""
from reid_tf.flags import FLAGS, define_flags


def parse_flags(*arguments):
    """Parse ``solution.py`` flags from scratch (every other flag at its default)."""
    define_flags()
    FLAGS.unparse_flags()
    FLAGS(["solution.py", *arguments])
    return FLAGS


def run_solution(*arguments):
    """Run solution.py's job in-process; returns the results dict of ``run``."""
    from reid_tf.cli.train import run
    return run(parse_flags(*arguments))


def random_resnet50_state_dict(rng, prefix="", bn_sets=("",), downsample=("0", "1"),
                               num_batches_tracked=7):
    """A PyTorch ResNet-50 (Bottleneck, [3, 4, 6, 3]) backbone state dict with random values,
    names written out here independently of the model code: ``prefix`` before every name,
    each BN's tensors under every name of ``bn_sets`` ("" for a plain BN; the CM-NAS
    reference's ``visible_bn``/``thermal_bn``/``sharable_bn``), the downsample conv and BN
    named by ``downsample`` (torchvision ``0``/``1``; the reference ``conv``/``bn``)."""
    import numpy as np
    state = {}

    def conv(name, cout, cin, k):
        std = np.sqrt(2.0 / (cin * k * k))
        state[f"{prefix}{name}.weight"] = (rng.normal(size=(cout, cin, k, k)) * std).astype(
            np.float32)

    def bn(name, c):
        for set_name in bn_sets:
            key = f"{prefix}{name}" + (f".{set_name}" if set_name else "")
            state[f"{key}.weight"] = rng.uniform(0.2, 0.6, c).astype(np.float32)
            state[f"{key}.bias"] = rng.normal(0, 0.1, c).astype(np.float32)
            state[f"{key}.running_mean"] = rng.normal(0, 0.1, c).astype(np.float32)
            state[f"{key}.running_var"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            state[f"{key}.num_batches_tracked"] = np.array(num_batches_tracked, np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, (blocks, planes) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512]), 1):
        for block in range(blocks):
            name = f"layer{stage}.{block}"
            conv(f"{name}.conv1", planes, cin if block == 0 else planes * 4, 1)
            bn(f"{name}.bn1", planes)
            conv(f"{name}.conv2", planes, planes, 3)
            bn(f"{name}.bn2", planes)
            conv(f"{name}.conv3", planes * 4, planes, 1)
            bn(f"{name}.bn3", planes * 4)
            if block == 0:
                conv(f"{name}.downsample.{downsample[0]}", planes * 4, cin, 1)
                bn(f"{name}.downsample.{downsample[1]}", planes * 4)
        cin = planes * 4
    return state
