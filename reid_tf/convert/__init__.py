"""Import PyTorch checkpoints of the reference implementations into Keras ``.h5`` weights.

``python -m reid_tf.convert --architecture msinet --source_file_path X.pth.tar
--output_file_path Y.h5`` (see ``reid_tf/convert/__main__.py``). Each architecture has its own
module exposing ``convert(state_dict, output_file_path, **options) -> ConversionReport``.
"""
from reid_tf.runtime.checkpoints import (  # noqa: F401
    ConversionError,
    ConversionReport,
    WeightAssigner,
    conv_kernel,
    depthwise_kernel,
    linear_kernel,
    load_state_dict,
)

# architecture flag value -> module under reid_tf.convert
ARCHITECTURES = {
    "msinet": "reid_tf.convert.msinet",
    "cmnas_resnet50": "reid_tf.convert.cmnas",
}
