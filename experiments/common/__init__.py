"""The experiments' shared core: ``layout`` (the run layout every stage asks for its paths),
``results`` (reading and writing results, curves, reports), ``inputs`` (data and run lengths
from a config), ``teacher`` (teachers from configs, mode ``finetune_teacher``), ``export``
(deployable transmitter and receiver) and ``classifier`` (mode ``train_classifier``).
Studies import from here, never from one another's private names."""
