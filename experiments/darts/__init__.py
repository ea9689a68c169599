"""KDL-DARTS and DARTS on the shared core: ``search`` (modes ``search``, ``retrain``) and
``comparison`` (the table of scripts/darts_fmnist.sh)."""
