"""Data: sources behind one interface, and deterministic grain pipelines."""

from rkdsc_jax.data.pipeline import (
    AUGMENT_POLICIES,
    NORMALIZATIONS,
    AugmentConfig,
    PreprocessConfig,
    augment,
    augment_batch,
    augmentation_seed,
    eval_batches,
    preprocess,
    read_batch,
    train_iterator,
)
from rkdsc_jax.data.sources import (
    ArraySource,
    DataSource,
    DatasetInfo,
    SubsetSource,
    TfdsSource,
    fashion_mnist,
    get_source,
    image_folder,
    split_train_validation,
    synthetic,
    take,
)
