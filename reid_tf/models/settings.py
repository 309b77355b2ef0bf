"""What defines a network: :class:`ModelSettings`, the typed input of
:func:`reid_tf.models.factory.build_models`.

The entry points build it from their flags (``reid_tf.cli.settings.model_settings``); the
field names are those of ``solution.py``'s flags.
"""
import dataclasses

from reid_tf.models.cmnas_config import DEFAULT_CONFIG_FILE


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The network of a run.

    Attributes:
      backbone_model_name: ``resnet50``, ``ibn_resnet50``, ``resnesta50`` (FlipReID),
        ``msinet`` or ``cmnas_resnet50``.
      image_height, image_width: the input size.
      region_num, pooling_mode, min_value, max_value, *_regularization_factor: FlipReID's
        heads and L2 factors (FlipReID backbones only).
      use_horizontal_flipping_inside_model: the FlipReID flip structure around any family.
      backbone_weights_file_path: local ImageNet weights ('' = random initialisation).
      genotype_file_path: MSINet's genotype (a name or a JSON file).
      cmnas_config_file_path: CM-NAS's 53-value BN config.
      switchable_config_file_path: with ``msinet`` on visible-infrared data, an 80-value
        config that makes every MSINet BN switchable ('' = the plain network).
      sam: MSINet's spatial alignment module (score maps for the SAM loss).
      allow_pickle: read a ``.pth`` ImageNet weights file that needs pickle (trusted files
        only; ``--allow_pickle``); without it such a file is refused.
    """

    backbone_model_name: str = "resnet50"
    image_height: int = 384
    image_width: int = 128
    region_num: int = 2
    pooling_mode: str = "GeM"
    min_value: float = 0.0
    max_value: float = 1.0
    kernel_regularization_factor: float = 5e-4
    bias_regularization_factor: float = 5e-4
    gamma_regularization_factor: float = 5e-4
    beta_regularization_factor: float = 5e-4
    use_horizontal_flipping_inside_model: bool = False
    backbone_weights_file_path: str = ""
    genotype_file_path: str = "configs/genotypes/msmt.json"
    cmnas_config_file_path: str = DEFAULT_CONFIG_FILE
    switchable_config_file_path: str = ""
    sam: bool = False
    allow_pickle: bool = False

    @property
    def input_shape(self):
        return (int(self.image_height), int(self.image_width), 3)
