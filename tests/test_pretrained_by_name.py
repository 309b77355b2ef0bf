"""``--pretrained_model_file_path`` into a model whose layout differs: tensors are copied by
layer name and shape (the references' ``copy_state_dict``), the rest listed by name."""
import numpy as np
import pytest

import reid_tf  # noqa: F401
import tf_keras as keras

from reid_tf.cli.train import load_pretrained_weights
from reid_tf.runtime.checkpoints import load_h5_by_name_and_shape


def _model(num_classes, sam):
    images = keras.Input((6,), name="images")
    features = keras.layers.Dense(4, name="fc")(images)
    features = keras.layers.BatchNormalization(name="head_bn")(features)
    outputs = [keras.layers.Dense(num_classes, use_bias=False, name="classifier")(features)]
    if sam:
        outputs.append(keras.layers.Dense(2, name="sam_query_conv")(features))
    return keras.Model(images, outputs, name="training_model")


@pytest.fixture
def saved(tmp_path):
    keras.utils.set_random_seed(1)
    source = _model(5, sam=False)
    for variable in source.weights:  # values no initialiser would give
        variable.assign(np.arange(np.prod(variable.shape), dtype=np.float32).reshape(
            variable.shape) + 0.25)
    path = str(tmp_path / "five_classes.h5")
    source.save_weights(path)
    return source, path


def test_matching_tensors_load_and_the_rest_are_listed(saved, capsys):
    source, path = saved
    target = _model(7, sam=True)
    before = {weight.name: weight.numpy().copy() for weight in target.weights}
    summary = load_pretrained_weights([target], path)
    assert summary["match"] == "by_name_and_shape"
    # fc kernel + bias, head_bn gamma, beta, moving mean, moving variance: 6 of 9 weights.
    assert summary["loaded"] == 6
    assert sorted(summary["not_loaded"]) == ["classifier/kernel:0", "sam_query_conv/bias:0",
                                             "sam_query_conv/kernel:0"]
    assert summary["file_tensors_not_loaded"] == ["classifier/classifier/kernel:0"]
    values = {weight.name: weight.numpy() for weight in source.weights}
    for weight in target.weights:
        expected = values[weight.name] if weight.name not in summary["not_loaded"] \
            else before[weight.name]
        np.testing.assert_array_equal(weight.numpy(), expected, err_msg=weight.name)
    log = capsys.readouterr().out
    assert "6 of 9 weights loaded" in log
    for name in summary["not_loaded"]:
        assert f"  {name}" in log


def test_exact_layout_loads_strictly(saved):
    source, path = saved
    target = _model(5, sam=False)
    assert load_pretrained_weights([target], path)["match"] == "exact"
    for mine, theirs in zip(target.weights, source.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_nothing_in_common_is_an_error(saved):
    _, path = saved
    images = keras.Input((6,))
    other = keras.Model(images, keras.layers.Dense(3, name="other")(images))
    with pytest.raises(ValueError, match="no tensor matches by name and shape"):
        load_pretrained_weights([other], path)
    assert not load_h5_by_name_and_shape(other, path, assign=False).assigned
