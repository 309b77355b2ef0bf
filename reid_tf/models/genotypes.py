"""MSINet genotypes: the 12 interaction-operation names of a searched architecture.

A genotype lists, for the six cells ``cells[0, 1, 3, 4, 6, 7]`` in order, the first (op2) and
the second (op3) interaction operation: stage ``i`` uses ``g[4i], g[4i+1]`` (first cell) and
``g[4i+2], g[4i+3]`` (second cell) — msinet.md §4.1.

Genotype JSON files hold either a list of 12 names or an object with a ``"genotype"`` list;
:func:`save_genotype` writes the list form. ``configs/genotypes/msmt.json`` is the published
'msmt' genotype.
"""
import json
import os

from reid_tf.models.msinet_ops import OP_NAMES

GENOTYPE_LENGTH = 12

MSMT_GENOTYPE = ("ag", "ag", "exc", "ag",
                 "cross_att", "ag", "ag", "none",
                 "ag", "cross_att", "exc", "cross_att")

# Registered genotypes (name -> operations), as in the reference genotype factory.
GENOTYPES = {"msmt": MSMT_GENOTYPE}


def validate_genotype(genotype, source="genotype"):
    """Check a genotype and return it as a list of 12 strings.

    Args:
      genotype: sequence of operation names.
      source: what to name in error messages (e.g. the JSON file path).

    Raises:
      ValueError: not a sequence of 12 entries, or an entry that is not one of
        ``none, exc, ag, cross_att`` (the message names the source, the position and the
        allowed names).
    """
    if isinstance(genotype, (str, bytes)) or not hasattr(genotype, "__len__"):
        raise ValueError(f"{source}: a genotype must be a list of {GENOTYPE_LENGTH} operation "
                         f"names, got {genotype!r}.")
    genotype = list(genotype)
    if len(genotype) != GENOTYPE_LENGTH:
        raise ValueError(f"{source}: a genotype has {GENOTYPE_LENGTH} operations (2 per cell, "
                         f"6 cells), got {len(genotype)}: {genotype}.")
    for position, op_name in enumerate(genotype):
        if not isinstance(op_name, str) or op_name not in OP_NAMES:
            raise ValueError(f"{source}: unknown operation {op_name!r} at position {position}; "
                             f"allowed names: {', '.join(OP_NAMES)}.")
    return genotype


def load_genotype(file_path):
    """Read and validate a genotype JSON file (a list, or ``{"genotype": [...]}``)."""
    file_path = os.path.expanduser(str(file_path))
    if not os.path.isfile(file_path):
        raise ValueError(f"Genotype file not found: {file_path}.")
    try:
        with open(file_path, encoding="utf-8") as stream:
            content = json.load(stream)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file_path}: not valid JSON ({error}).") from error
    if isinstance(content, dict):
        if "genotype" not in content:
            raise ValueError(f"{file_path}: a JSON object must hold the key 'genotype' (a list "
                             f"of {GENOTYPE_LENGTH} operation names); keys: {sorted(content)}.")
        content = content["genotype"]
    if not isinstance(content, list):
        raise ValueError(f"{file_path}: expected a JSON list of {GENOTYPE_LENGTH} operation "
                         f"names, got {type(content).__name__}.")
    return validate_genotype(content, source=file_path)


def save_genotype(genotype, file_path):
    """Validate ``genotype`` and write it to ``file_path`` as a JSON list."""
    genotype = validate_genotype(genotype, source=str(file_path))
    directory = os.path.dirname(os.path.abspath(file_path))
    os.makedirs(directory, exist_ok=True)
    with open(file_path, "w", encoding="utf-8") as stream:
        json.dump(genotype, stream)
        stream.write("\n")


def resolve_genotype(genotype):
    """A validated list of 12 names from a list, a JSON file path, or a registered name.

    Strings are read as a file path when such a file exists, otherwise looked up in
    :data:`GENOTYPES` (``"msmt"``).
    """
    if isinstance(genotype, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(genotype))
        if os.path.isfile(path):
            return load_genotype(path)
        if path in GENOTYPES:
            return list(GENOTYPES[path])
        raise ValueError(f"Genotype {path!r} is neither an existing JSON file nor a registered "
                         f"genotype name ({', '.join(sorted(GENOTYPES))}).")
    return validate_genotype(genotype)
