"""KDL-DARTS (SPEC §4.1): search space, bi-level search, genotypes, retrain networks.

Reads in data-flow order: ``ops`` (the eight DARTS ops) → ``search_space`` (supernet, α in
the ``"arch"`` collection) → ``search`` (state, optimisers, KDL loss, complexity C(α),
first/second-order steps) → ``genotypes`` (derivation, JSON) → ``network`` (a network
from a genotype, for retraining).
"""

from rkdsc_jax.nas.genotypes import Genotype, alpha_snapshot, derive, load, op_histogram, save
from rkdsc_jax.nas.network import GenotypeNetwork, genotype_param_count
from rkdsc_jax.nas.ops import PRIMITIVES, op_param_count
from rkdsc_jax.nas.search import (
    Complexity,
    SearchHParams,
    SearchState,
    arch_gradient,
    create_search_state,
    epoch_cosine_schedule,
    make_arch_optimizer,
    make_weight_optimizer,
    search_step,
)
from rkdsc_jax.nas.search_space import SearchNetwork, cell_plan
