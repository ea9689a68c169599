"""The run layout: the one object every stage asks for its paths.

A study (paper B) or pipeline (paper A) keeps all of its stages under one root::

    teacher/                  the teacher's fine-tuning run (checkpoints, summary.json)
    teacher/teacher/          the fine-tuned teacher (Orbax weights + teacher.json)
    search/                   the KDL-DARTS search (genotype.json, alphas/, summary.json)
    logits/                   the teacher-logit store (manifest.json, shards, summary.json)
    runs/<method>/seed<s>/    one trained method and seed (checkpoints, metrics, summary.json)
    runs/<name>/              an evaluation-only run (the teacher over the channel)
    runs/size<n>/<method>/    paper B's training-set-size sweep
    runs/beta<β>/, long<f>x/  paper B's β sweep; its arms trained f times longer
    export/<method>_seed<s>/  the deployable transmitter and receiver
    report.md, results.json, *.png, latency.json, fdm_ablation.json

Paths are ``etils.epath.Path``: a ``gs://`` root works as a local one.
"""

from __future__ import annotations

import dataclasses

from etils import epath


@dataclasses.dataclass(frozen=True)
class RunLayout:
    root: epath.Path
    # Config overrides: a teacher, store or export that lives elsewhere.
    teacher_dir: epath.Path | None = None
    store_dir: epath.Path | None = None
    export_dir: epath.Path | None = None

    @classmethod
    def from_config(cls, config, root) -> RunLayout:
        """``config.teacher.finetuned_dir``, ``config.store.directory`` and ``config.export.directory``
        override the defaults when the config has and sets them."""
        def override(section: str, field: str):
            fields = config.get(section)
            value = fields.get(field) if fields is not None else None
            return epath.Path(value) if value else None

        return cls(epath.Path(root), override("teacher", "finetuned_dir"), override("store", "directory"),
                   override("export", "directory"))

    def __truediv__(self, name: str) -> epath.Path:
        return self.root / name

    @property
    def teacher_run(self) -> epath.Path:
        return self.root / "teacher"

    @property
    def teacher(self) -> epath.Path:
        """Where the fine-tuned teacher's weights are written and read."""
        return self.teacher_dir or self.teacher_run / "teacher"

    @property
    def search(self) -> epath.Path:
        return self.root / "search"

    @property
    def store(self) -> epath.Path:
        return self.store_dir or self.root / "logits"

    def method_dir(self, method: str) -> epath.Path:
        return self.root / "runs" / method

    def run(self, method: str, seed: int | None = None) -> epath.Path:
        """``runs/<method>/seed<s>``, or ``runs/<method>`` for a run without seeds."""
        return self.method_dir(method) if seed is None else self.method_dir(method) / f"seed{seed}"

    def size_run(self, size: int, method: str, seed: int) -> epath.Path:
        return self.root / "runs" / f"size{size}" / method / f"seed{seed}"

    def beta_run(self, beta: float, method: str, seed: int) -> epath.Path:
        return self.root / "runs" / f"beta{beta:g}" / method / f"seed{seed}"

    def long_run(self, factor: int, method: str, seed: int) -> epath.Path:
        """Paper B's longer-training check: ``factor`` times the main runs' steps."""
        return self.root / "runs" / f"long{factor}x" / method / f"seed{seed}"

    def export(self, method: str, seed: int) -> epath.Path:
        return self.export_dir or self.root / "export" / f"{method}_seed{seed}"
