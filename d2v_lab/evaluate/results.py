"""What a probe run measured, as small dataclasses. ``to_json()`` gives the layout of ``probe.json``;
``from_json()`` reads it back, so the CLI, the tour, the report and the notebooks read attributes
(``result.main.linear.pretrained``), not string paths into nested dicts."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .stats import call, wilson_interval

DISCRIMINATION_MARGIN = 0.15   # supervised minus random init, in accuracy, for a task to count as evidence
VERDICT_WORDS = {"yes": "better", "no": "not better", "inconclusive": "inconclusive"}   # stats.call's answers


def discrimination(supervised: float | None, random_init: float) -> tuple[bool | None, float | None]:
    """(discriminates, margin): can this task tell a good encoder from a random one? The same network
    trained with labels (the supervised reference) must beat its random init, read out by the linear
    probe, by >= ``DISCRIMINATION_MARGIN``; margin = supervised - random init (test accuracies).
    (None, None) without a supervised reference: then it is not known."""
    if supervised is None:
        return None, None
    margin = supervised - random_init
    return margin >= DISCRIMINATION_MARGIN - 1e-12, margin


@dataclass(frozen=True)
class Scores:
    """One probe's test accuracy for each feature source, all read out the same way."""
    pretrained: float
    random_init: float
    raw_input: float

    def margin(self, baseline: str = "random_init") -> float:
        """Pretrained minus a baseline, in accuracy (0-1)."""
        return self.pretrained - getattr(self, baseline)


@dataclass(frozen=True)
class TaskResult:
    """One probe task of one pretrained encoder against its baselines."""
    modality: str
    task: str
    checkpoint: str
    n_train: int                 # train + val examples (the final fit uses both)
    n_val: int
    n_test: int
    chance: float
    majority: float
    classes: list[str]
    linear: Scores
    knn: Scores
    knn_k: int
    supervised: dict | None      # {"accuracy", "val_accuracy", "best_epoch", "epochs", ...} or None
    selected: dict               # {"pretrained": {"pool", "layer", "test", "val", "C"}, "random_init": ..., "raw_input": ...}
    per_layer: list[dict]        # [{"layer", "pretrained", "pretrained_val", "random_init", "random_init_val"}]
    pool: str
    note: str = ""
    counts: dict = field(default_factory=dict)
    # can the task tell a good encoder from a random one (see ``discrimination``)? None: not measured
    # (no supervised reference, or a probe.json written before this check existed)
    discriminates: bool | None = None
    discrimination_margin: float | None = None

    @property
    def supervised_accuracy(self) -> float | None:
        return None if self.supervised is None else self.supervised["accuracy"]

    def interval(self, accuracy: float) -> tuple[float, float]:
        """The 95% Wilson interval of an accuracy measured on this task's ``n_test`` test items."""
        return wilson_interval(accuracy, self.n_test)

    def verdict(self, baseline: str = "random_init") -> str:
        """Is the pretrained encoder better than ``baseline`` ("random_init" or "raw_input") on this task?
        "better" when the whole 95% interval of its linear-probe accuracy lies above the baseline's
        accuracy, "not better" when it lies at or below it, "inconclusive" when it straddles it
        (``stats.call``, the rule of every verdict: the test set is too small to tell). Against random
        init, a task that does not discriminate (``discrimination``) is "inconclusive" whatever the
        numbers: it cannot tell a good encoder from a random one, so it is no evidence either way."""
        if baseline == "random_init" and self.discriminates is False:
            return "inconclusive"
        return VERDICT_WORDS[call(self.interval(self.linear.pretrained), getattr(self.linear, baseline))]

    def to_json(self) -> dict:
        out = asdict(self)
        out["knn"] = {**out["knn"], "k": out.pop("knn_k")}
        return out

    @classmethod
    def from_json(cls, d: dict) -> TaskResult:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ or k == "knn"}
        knn = dict(d.pop("knn"))
        return cls(**{**d, "linear": Scores(**d["linear"]), "knn_k": knn.pop("k"), "knn": Scores(**knn)})


@dataclass(frozen=True)
class ProbeResult:
    """Every probe task of one run (the modality's main task first) and how they were made."""
    tasks: list[TaskResult]
    probe_config: dict
    data_root: str

    @property
    def main(self) -> TaskResult:
        return self.tasks[0]

    @property
    def extra(self) -> list[TaskResult]:
        return self.tasks[1:]

    def to_json(self) -> dict:
        """probe.json: the main task's fields at the top level, the others under "extra_tasks"."""
        return {**self.main.to_json(), "extra_tasks": [t.to_json() for t in self.extra],
                "probe_config": self.probe_config, "data_root": self.data_root}

    @classmethod
    def from_json(cls, d: dict) -> ProbeResult:
        tasks = [TaskResult.from_json(d)] + [TaskResult.from_json(t) for t in d.get("extra_tasks", [])]
        return cls(tasks, d["probe_config"], d["data_root"])
