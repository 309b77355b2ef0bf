"""CM-NAS architecture configs: one switch value per switchable BN (spec ``cmnas.md`` §5).

A config file is plain text whose **first line** holds 53 space-separated integers, each 0
(split: modality-specific BN) or 1 (share); further lines are ignored, as in the reference.
Token k is the k-th switchable BN in the construction order of §3.3 (see
:func:`reid_tf.models.cmnas.switchable_bn_layout`). Unlike the reference (which crashes on a
short list and silently truncates a long one) a wrong length or value is an error.
"""
import os

import numpy as np

from reid_tf.runtime.errors import UsageError

NUM_SWITCHABLE_BN = 53
# The config of --cmnas_config_file_path's default (every BN shared), relative to the project.
DEFAULT_CONFIG_FILE = "configs/cmnas/all_share.cfg"
ALL_SHARE = (1,) * NUM_SWITCHABLE_BN
ALL_SPLIT = (0,) * NUM_SWITCHABLE_BN


class ConfigError(UsageError):
    """A CM-NAS config that is missing, malformed or of the wrong length/values."""


def validate_config(config, source="config", length=NUM_SWITCHABLE_BN):
    """Return ``config`` as a list of Python ints after checking length and values.

    Args:
      config: a sequence of 0/1 integers (lists, tuples, numpy arrays; bools are rejected).
      source: what to name in error messages (a file path or a flag).
      length: the required number of entries (53 for ResNet-50).

    Raises:
      ConfigError (a ValueError) naming ``source`` and the offending position/value.
    """
    if isinstance(config, (str, bytes, os.PathLike)):
        raise ConfigError(f"{source}: expected a sequence of 0/1 values, got a path/string "
                          f"{config!r}; use read_config() for files.")
    values = list(np.asarray(config).reshape(-1).tolist()) if isinstance(config, np.ndarray) \
        else list(config)
    if len(values) != length:
        raise ConfigError(f"{source}: a CM-NAS ResNet-50 config needs exactly {length} values "
                          f"(one per switchable BN), got {len(values)}.")
    result = []
    for position, value in enumerate(values):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
                or int(value) not in (0, 1):
            raise ConfigError(f"{source}: value {value!r} at position {position} is not 0 "
                              f"(split) or 1 (share).")
        result.append(int(value))
    return result


def read_config(file_path, length=NUM_SWITCHABLE_BN):
    """Read a config file: the first line, split on whitespace, parsed as 0/1 integers.

    Raises FileNotFoundError for a missing file and ConfigError (ValueError) for an empty file,
    a token that is not an integer, a value other than 0/1 or a length other than ``length``;
    messages name the file and the position/value.
    """
    file_path = os.fspath(file_path)
    if not os.path.isfile(file_path):
        raise FileNotFoundError(f"CM-NAS config file not found: {file_path} "
                                f"(flag --cmnas_config_file_path).")
    with open(file_path, "r", encoding="utf-8") as stream:
        line = stream.readline()
    tokens = line.strip().split()
    if not tokens:
        raise ConfigError(f"{file_path}: the first line is empty; expected {length} "
                          f"space-separated values 0/1.")
    values = []
    for position, token in enumerate(tokens):
        try:
            values.append(int(token))
        except ValueError:
            raise ConfigError(f"{file_path}: token {token!r} at position {position} is not an "
                              f"integer (expected 0 or 1).") from None
    return validate_config(values, source=file_path, length=length)


def write_config(config, file_path, length=NUM_SWITCHABLE_BN):
    """Write ``config`` as one line of space-separated values (the reference format)."""
    values = validate_config(config, source=os.fspath(file_path), length=length)
    directory = os.path.dirname(os.fspath(file_path))
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(file_path, "w", encoding="utf-8") as stream:
        stream.write(" ".join(str(value) for value in values) + "\n")
    return values


def resolve_config(config, length=NUM_SWITCHABLE_BN):
    """A config given as a sequence of 0/1 values or as a path to a ``.cfg`` file -> list."""
    if isinstance(config, (str, os.PathLike)):
        return read_config(config, length=length)
    return validate_config(config, length=length)


def derive_config(architecture_weights):
    """Discretise search results: one (split, share) pair per layer -> 0/1 list.

    ``architecture_weights`` is an array of shape (L, 2) of logits alpha or weights pi (the
    argmax is the same). Bit = argmax over (split = 0, share = 1); an exact tie gives split.
    """
    weights = np.asarray(architecture_weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != 2:
        raise ConfigError(f"architecture weights must have shape (layers, 2), got "
                          f"{weights.shape}.")
    return [1 if share > split else 0 for split, share in weights]
