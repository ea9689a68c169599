"""The former path of ``experiments.darts.comparison`` (tests/test_nas.py imports it;
``python -m experiments.darts_comparison`` still runs it)."""

from absl import app

from experiments.darts.comparison import collect, main, markdown, plot

if __name__ == "__main__":
    app.run(main)
