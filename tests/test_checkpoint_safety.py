"""Checkpoints are read without executing pickle: a ``.pth`` that needs pickle is refused with
its path and the reason unless ``allow_pickle`` (``--allow_pickle``) is given; a plain state
dict loads as before."""
import argparse
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags as absl_flags

from helpers import parse_flags
from reid_tf.runtime.checkpoints import ConversionError, PickleRefusedError, load_state_dict

torch = pytest.importorskip("torch")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tensors():
    return {"conv1.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "bn1.running_mean": torch.tensor([0.5, -1.5])}


@pytest.fixture
def namespace_checkpoint(tmp_path):
    """A checkpoint as the reference trainers save it: the arguments (an argparse.Namespace,
    which only pickle can rebuild) beside the state dict."""
    path = str(tmp_path / "with_args.pth.tar")
    torch.save({"state_dict": _tensors(), "args": argparse.Namespace(lr=0.065)}, path)
    return path


def test_file_that_needs_pickle_is_refused_with_path_and_reason(namespace_checkpoint):
    with pytest.raises(PickleRefusedError) as caught:
        load_state_dict(namespace_checkpoint)
    message = str(caught.value)
    assert namespace_checkpoint in message
    assert "argparse.Namespace" in message  # what the file needs
    assert "--allow_pickle" in message
    assert isinstance(caught.value, ConversionError)


def test_allow_pickle_loads_it(namespace_checkpoint, capsys):
    state = load_state_dict(namespace_checkpoint, allow_pickle=True)
    assert list(state) == ["conv1.weight", "bn1.running_mean"]
    np.testing.assert_array_equal(state["conv1.weight"], [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(state["bn1.running_mean"], [0.5, -1.5])
    assert "with pickle" in capsys.readouterr().out  # never silently


def test_plain_state_dict_loads_without_allow_pickle(tmp_path):
    path = str(tmp_path / "plain.pth")
    torch.save({"module." + name: value for name, value in _tensors().items()}, path)
    state = load_state_dict(path)
    assert list(state) == ["conv1.weight", "bn1.running_mean"]
    np.testing.assert_array_equal(state["bn1.running_mean"], [0.5, -1.5])


def test_corrupt_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="broken.pth"):
        load_state_dict(str(path))


def test_convert_command_refuses_it_in_one_line(namespace_checkpoint, tmp_path):
    command = [sys.executable, "-m", "reid_tf.convert", "--architecture=msinet",
               f"--source_file_path={namespace_checkpoint}",
               f"--output_file_path={tmp_path / 'out.h5'}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and namespace_checkpoint in lines[-1]
    assert "Traceback" not in result.stderr


def test_allow_pickle_flag_refused_when_nothing_is_unpickled():
    from reid_tf.flags import validate_flags
    with pytest.raises(absl_flags.ValidationError, match="--allow_pickle"):
        validate_flags(parse_flags("--dataset_name=Synthetic", "--allow_pickle"))
    values = parse_flags("--dataset_name=Synthetic_SYSU", "--backbone_model_name=cmnas_resnet50",
                         "--backbone_weights_file_path=resnet50.pth", "--allow_pickle")
    validate_flags(values)
    from reid_tf.cli.settings import model_settings
    assert model_settings(values).allow_pickle is True
