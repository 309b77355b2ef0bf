"""Every shipped flagfile parses, and its values pass the flag validation."""
import glob
import os

import pytest

from helpers import parse_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.flags"), recursive=True))


def test_flagfiles_exist():
    names = {os.path.relpath(path, ROOT) for path in FLAGFILES}
    for dataset in ("market1501", "dukemtmc_reid", "msmt17"):
        for backbone in ("resnet50", "ibn_resnet50", "resnesta50"):
            assert f"configs/flipreid/{dataset}_{backbone}.flags" in names
    assert "configs/msinet/market1501.flags" in names
    assert "configs/quickstart.flags" in names


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_flagfile_parses_and_validates(path, monkeypatch):
    from reid_tf.flags import validate_flags
    monkeypatch.chdir(ROOT)
    if os.path.basename(os.path.dirname(path)) == "nas":
        pytest.skip("search flagfiles are checked by the nas tests")
    values = parse_flags(f"--flagfile={path}")
    validate_flags(values)


def test_flipreid_recipe_values():
    from reid_tf.flags import FLAGS
    monkey = parse_flags(f"--flagfile={ROOT}/configs/flipreid/market1501_resnesta50.flags")
    assert monkey.learning_rate_base == 3e-4 and monkey.learning_rate_lower_bound == 3e-6
    assert monkey.kernel_regularization_factor == 0.001
    assert monkey.use_horizontal_flipping_inside_model
    assert not monkey.use_horizontal_flipping_in_evaluation
    assert (monkey.steps_per_epoch, monkey.epoch_num) == (200, 200)
    assert FLAGS.image_height == 384
