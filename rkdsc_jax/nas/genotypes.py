"""Genotypes: derivation from α (DARTS rule), the skip-connection cap, JSON in DARTS form.

A genotype is DARTS's ``Genotype(normal, normal_concat, reduce, reduce_concat)``: for each
cell type, two ``(op, input)`` pairs per intermediate node (inputs 0 and 1 are the cell's
inputs, k ≥ 2 the intermediate node k − 2) and the nodes concatenated as the cell output.
JSON form (``../shared/data/darts_v2_genotype.json``)::

    {"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5],
     "reduce": [...], "reduce_concat": [2, 3, 4, 5]}

Extra keys (``name``, ``source``, ``reported``) are kept in ``meta``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np
from etils import epath

from rkdsc_jax import files, genotype_data
from rkdsc_jax.nas.ops import PRIMITIVES
from rkdsc_jax.nas.search_space import CELL_TYPES, check_alpha, edge_index

Gene = tuple[tuple[str, int], ...]


@dataclasses.dataclass(frozen=True)
class Genotype:
    normal: Gene
    normal_concat: tuple[int, ...]
    reduce: Gene
    reduce_concat: tuple[int, ...]
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def __post_init__(self):
        for cell_type in CELL_TYPES:
            gene = tuple((_op_name(cell_type, k, op), _index(f"{cell_type!r} edge {k}'s input", j))
                         for k, (op, j) in enumerate(_pairs(cell_type, getattr(self, cell_type))))
            concat = getattr(self, f"{cell_type}_concat")
            if isinstance(concat, (str, bytes)) or not isinstance(concat, (Sequence, np.ndarray)):
                raise ValueError(f"Genotype {cell_type}_concat must be a list of state indices such as "
                                 f"[2, 3, 4, 5], got {concat!r}.")
            concat = tuple(_index(f"{cell_type}_concat entry", c) for c in concat)
            object.__setattr__(self, cell_type, gene)
            object.__setattr__(self, f"{cell_type}_concat", concat)
            _validate(cell_type, gene, concat)

    @property
    def steps(self) -> int:
        return len(self.normal) // 2

    def cell(self, cell_type: str) -> tuple[Gene, tuple[int, ...]]:
        if cell_type not in CELL_TYPES:
            raise ValueError(f"cell_type must be one of {CELL_TYPES}, got {cell_type!r}.")
        return getattr(self, cell_type), getattr(self, f"{cell_type}_concat")

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.meta)
        out.update({"normal": [list(p) for p in self.normal], "normal_concat": list(self.normal_concat),
                    "reduce": [list(p) for p in self.reduce], "reduce_concat": list(self.reduce_concat)})
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Genotype":
        if not isinstance(d, Mapping):
            raise ValueError(f"A genotype is one JSON object with normal, normal_concat, reduce and reduce_concat; "
                             f"got a {type(d).__name__}.")
        missing = [k for k in ("normal", "normal_concat", "reduce", "reduce_concat") if k not in d]
        if missing:
            raise ValueError(
                f"Genotype JSON lacks {missing}; it needs normal, normal_concat, reduce and reduce_concat "
                "in DARTS form, e.g. {\"normal\": [[\"sep_conv_3x3\", 0], ...], \"normal_concat\": [2, 3, 4, 5], ...}.")
        for cell_type in CELL_TYPES:
            _pairs(cell_type, d[cell_type])
        meta = {k: v for k, v in d.items() if k not in ("normal", "normal_concat", "reduce", "reduce_concat")}
        return cls(tuple(map(tuple, d["normal"])), d["normal_concat"], tuple(map(tuple, d["reduce"])),
                   d["reduce_concat"], meta)


def _pairs(cell_type: str, gene) -> tuple:
    if isinstance(gene, (str, bytes)) or not isinstance(gene, Sequence):
        raise ValueError(f"Genotype {cell_type!r} must be a list of [op, input_index] pairs, got {gene!r}.")
    for pair in gene:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise ValueError(f"Genotype {cell_type!r} entry {pair!r} is not an [op, input_index] pair.")
    return tuple(gene)


def _op_name(cell_type: str, k: int, op) -> str:
    if not isinstance(op, str):
        raise ValueError(f"Genotype {cell_type!r} edge {k} names its op {op!r}, not a string; the op names "
                         f"are {list(PRIMITIVES)}.")
    return op


def _index(what: str, value) -> int:
    """A state index: an int (JSON numbers like 2.0 too), never a bool, 1.5 or "2"."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or value != int(value):
        raise ValueError(f"Genotype {what} is {value!r}; state indices are ints (0 and 1: the cell's inputs, "
                         f"k >= 2: intermediate node k).")
    return int(value)


def _validate(cell_type: str, gene: Gene, concat: tuple[int, ...]) -> None:
    if len(gene) == 0 or len(gene) % 2:
        raise ValueError(
            f"Genotype {cell_type!r} has {len(gene)} edges; a cell keeps exactly 2 incoming edges per "
            f"intermediate node (8 for DARTS's 4 nodes), so give an even, non-zero number of [op, input] pairs.")
    for k, (op, j) in enumerate(gene):
        if op not in PRIMITIVES:
            raise ValueError(
                f"Genotype {cell_type!r} edge {k} uses unknown op {op!r}; the op names are {list(PRIMITIVES)}.")
        node = k // 2
        if not 0 <= j < node + 2:
            raise ValueError(
                f"Genotype {cell_type!r} edge {k} (node {node + 2}) takes input {j}, but node {node + 2} "
                f"can only read states 0..{node + 1} (the two cell inputs and earlier nodes).")
    steps = len(gene) // 2
    bad = [c for c in concat if not 0 <= c < steps + 2]
    if not concat or bad:
        raise ValueError(f"Genotype {cell_type}_concat {list(concat)} must list states in 0..{steps + 1}.")
    if len(set(concat)) != len(concat):
        raise ValueError(f"Genotype {cell_type}_concat {list(concat)} lists a state twice; list each "
                         f"concatenated node once (DARTS: {list(range(2, steps + 2))}).")


def load(spec: epath.PathLike) -> Genotype:
    """A published genotype by name (``genotype_data.NAMES``: the package's copies), a genotype
    JSON file, or a finished search workdir holding ``genotype.json``; any epath (``gs://``)."""
    if str(spec) in genotype_data.NAMES:
        return Genotype.from_dict(genotype_data.as_dict(str(spec)))
    path = epath.Path(spec)
    path = path / "genotype.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"No genotype file {str(path)!r}; pass a genotype JSON in DARTS form, a finished "
                                f"search workdir or one of the published genotypes {list(genotype_data.NAMES)}.")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); a genotype file is one JSON object.") from e
    return Genotype.from_dict(d)


def save(genotype: Genotype, path: str) -> None:
    files.atomic_write_json(path, genotype.to_dict())


# --- Derivation ---------------------------------------------------------------------------


def _softmax(a: np.ndarray) -> np.ndarray:
    e = np.exp(a - a.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def parse_cell(weights: np.ndarray, primitives: Sequence[str] = PRIMITIVES, steps: int = 4,
               banned: set[tuple[int, int]] = frozenset()) -> Gene:
    """DARTS's ``_parse``: per node the two inputs with the strongest non-"none" op, each
    with that op.  ``weights`` (14, 8) are softmax(α); ``banned`` (edge, op) pairs are
    excluded (the skip cap uses it).  Ties break to the lower edge / op index, as DARTS."""
    none = primitives.index("none") if "none" in primitives else None
    w = np.array(weights, np.float64)
    for edge, k in banned:
        w[edge, k] = -np.inf
    if none is not None:
        w[:, none] = -np.inf
    gene, start = [], 0
    for i in range(steps):
        n = i + 2
        block = w[start:start + n]
        strength = block.max(axis=1)
        edges = sorted(range(n), key=lambda j: -strength[j])[:2]
        for j in edges:
            gene.append((primitives[int(np.argmax(block[j]))], j))
        start += n
    return tuple(gene)


def derive(alphas: Mapping[str, Any], primitives: Sequence[str] = PRIMITIVES, steps: int = 4,
           max_skip: int | None = None, cap_cells: Sequence[str] = ("normal",)) -> Genotype:
    """The genotype of α = {"normal": (14, 8), "reduce": (14, 8)} by the DARTS rule.

    ``max_skip`` caps the skip connections of each cell in ``cap_cells`` (P-DARTS's guard
    against collapse): while the derived cell has more, the kept skip edge with the smallest
    skip weight loses its skip option and the cell is derived again.  DARTS applies no cap;
    P-DARTS caps the normal cell at 2.
    """
    primitives = tuple(primitives)
    genes = {}
    for cell_type in CELL_TYPES:
        if cell_type not in alphas:
            raise ValueError(f"α has no {cell_type!r} entry; pass {{'normal': α_n, 'reduce': α_r}}.")
        alpha = np.asarray(alphas[cell_type], np.float64)
        check_alpha(alpha, steps, len(primitives), f"α[{cell_type!r}]")
        weights = _softmax(alpha)
        banned: set[tuple[int, int]] = set()
        gene = parse_cell(weights, primitives, steps)
        if max_skip is not None and cell_type in cap_cells and "skip_connect" in primitives:
            skip = primitives.index("skip_connect")
            while sum(op == "skip_connect" for op, _ in gene) > max_skip:
                kept = [edge_index(k // 2, j) for k, (op, j) in enumerate(gene) if op == "skip_connect"]
                weakest = min(kept, key=lambda e: weights[e, skip])
                banned.add((weakest, skip))
                gene = parse_cell(weights, primitives, steps, banned)
        genes[cell_type] = gene
    concat = tuple(range(2, steps + 2))
    return Genotype(genes["normal"], concat, genes["reduce"], concat)


def op_histogram(genotype: Genotype) -> dict[str, dict[str, int]]:
    """Counts of each op per cell type (all eight primitives listed, zeros included)."""
    out = {}
    for cell_type in CELL_TYPES:
        gene, _ = genotype.cell(cell_type)
        out[cell_type] = {name: sum(op == name for op, _ in gene) for name in PRIMITIVES}
    return out


def alpha_movement(initial: Mapping[str, Any], final: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """How far a search moved α, per cell type: ``max_abs_alpha_change``; the total-variation
    distance ½·Σ|softmax(α₁) − softmax(α₀)| per edge (``mean_tv``, ``max_tv``; 0: the mixture did
    not change, 1: all weight moved to other ops); ``mean_top_weight``: the edges' mean largest op
    weight (1/K when uniform, 1 when one-hot); ``uniform_weight`` = 1/K for comparison."""
    out = {}
    for cell_type in CELL_TYPES:
        a0, a1 = np.asarray(initial[cell_type], np.float64), np.asarray(final[cell_type], np.float64)
        if a0.shape != a1.shape:
            raise ValueError(f"alpha_movement: {cell_type} α shapes differ, {a0.shape} vs {a1.shape}; pass the "
                             "same search's α before and after.")
        p0, p1 = _softmax(a0), _softmax(a1)
        tv = 0.5 * np.abs(p1 - p0).sum(-1)
        out[cell_type] = {"max_abs_alpha_change": float(np.abs(a1 - a0).max()), "mean_tv": float(tv.mean()),
                          "max_tv": float(tv.max()), "mean_top_weight": float(p1.max(-1).mean()),
                          "uniform_weight": 1.0 / a1.shape[-1]}
    return out


def alpha_snapshot(alphas: Mapping[str, Any], primitives: Sequence[str] = PRIMITIVES) -> dict[str, Any]:
    """JSON-ready α and softmax(α) per cell type (rows = edges in DARTS order)."""
    out = {"primitives": list(primitives)}
    for cell_type in CELL_TYPES:
        a = np.asarray(alphas[cell_type], np.float64)
        out[cell_type] = {"alpha": a.tolist(), "softmax": _softmax(a).tolist()}
    return out
