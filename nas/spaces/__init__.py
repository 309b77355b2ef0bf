"""The search spaces of ``python -m nas.search --search_space`` (one module each):

* ``msi`` — :class:`nas.spaces.msi.MsiSearchSpace`, MSINet's multi-scale interactions with
  TCM (msinet.md §5, §6);
* ``bn_split`` — :class:`nas.spaces.bn_split.BnSplitSearchSpace`, CM-NAS's split-or-share
  choice for every BN (cmnas.md §11.2, reconstructed).

:data:`SEARCH_SPACES` maps each name to its class (the interface: :mod:`nas.spaces.base`);
:func:`register_search_space` adds another one.
"""
from nas.spaces.bn_split import BnSplitSearchSpace
from nas.spaces.msi import MsiSearchSpace

SEARCH_SPACES = {space.name: space for space in (MsiSearchSpace, BnSplitSearchSpace)}


def register_search_space(name, factory):
    """Register ``factory(config, dataframe, input_shape) -> SearchSpace`` as ``name``."""
    SEARCH_SPACES[name] = factory
    return factory


def search_space_class(name):
    """The class (factory) of search space ``name``; names the flag when there is none."""
    try:
        return SEARCH_SPACES[name]
    except KeyError:
        raise ValueError(f"--search_space={name!r}: no search space of that name is registered "
                         f"({', '.join(sorted(SEARCH_SPACES))}).") from None
