"""Named genotypes shipped with the package: the published DARTS cells (Liu, Simonyan, Yang,
ICLR 2019) and KDL_FMNIST, the cell this library's KDL-DARTS search found on Fashion-MNIST
(the student of the README's capacity study, so that it runs without the search first).

Plain JSON in DARTS form (``rkdsc_jax.nas.genotypes.Genotype.from_dict`` reads it); this module
imports nothing of ``rkdsc_jax`` so that any module, ``nas.genotypes`` included, can use it.
"""

from __future__ import annotations

import json
import os
from typing import Any

FILES = {"DARTS_V1": "darts_v1.json", "DARTS_V2": "darts_v2.json", "KDL_FMNIST": "kdl_fmnist.json"}
NAMES = tuple(FILES)


def path(name: str) -> str:
    """The packaged JSON file of the genotype ``name`` (one of ``NAMES``)."""
    if name not in FILES:
        raise KeyError(f"No published genotype {name!r}; the package ships {list(NAMES)}.")
    return os.path.join(os.path.dirname(__file__), FILES[name])


def as_dict(name: str) -> dict[str, Any]:
    with open(path(name), encoding="utf-8") as f:
        return json.load(f)
