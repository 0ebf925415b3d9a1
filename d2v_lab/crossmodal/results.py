"""What the cross-modal experiment measured, as small dataclasses. ``to_json()`` gives the layout of
``align.json``; ``from_json()`` reads it back, so readers use attributes
(``pair.retrieval_raw.observed``), not string paths into nested dicts."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field


def _build(cls, data):
    """A dataclass (possibly nested) from its ``asdict`` form."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, kind = data[f.name], hints[f.name]
        # "X | None" fields: the dataclass among the union's members
        kind = next((k for k in typing.get_args(kind) if dataclasses.is_dataclass(k)), kind)
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = _build(kind, value)
        kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class MutualKNN:
    """Mutual k-NN alignment (Huh et al. 2024) of the best layer pair, against its shuffled-pairs null."""
    best: float
    best_layers: list[int]
    null_p95: float
    chance: float
    k: int
    all_layer_pairs: list[list[float]]


@dataclass(frozen=True)
class CKA:
    """Unbiased linear CKA of the last layers, against its shuffled-pairs null, in two variants: on the
    raw features (``observed``, ``null_p95``; what the verdict reads) and after the preprocessing of
    Huh et al.'s code (``platonic_*``: |x| clipped at its 95% quantile, rows L2-normalised; see
    ``metrics.platonic_preprocessing``), so the number can be set next to theirs."""
    observed: float
    null_p95: float
    platonic_observed: float | None = None   # None in align.json files written before these fields
    platonic_null_p95: float | None = None
    # with the layer search (AlignConfig.layer_search): the best layer pair [a, b] of each variant,
    # whose null took the same maximum over every layer pair; None = the last layers
    layers: list[int] | None = None
    platonic_layers: list[int] | None = None


@dataclass(frozen=True)
class RawRetrieval:
    """Cross-modal concept retrieval with NO fitting (each side reduced to ``common_dim`` on its own)."""
    observed: float
    chance: float
    permutation_p95: float
    rotation_p95: float
    common_dim: int
    layers: list[int] | None = None          # the best layer pair with the layer search, else None (last layers)

    @property
    def null_p95(self) -> float:
        """The stricter of the two nulls: shuffled pairs or randomly rotated coordinates."""
        return max(self.permutation_p95, self.rotation_p95)


@dataclass(frozen=True)
class Procrustes:
    """A rotation fitted on half of the pairs, scored on the other half."""
    retrieval_before: float
    retrieval_after: float
    pair_cosine_before: float
    pair_cosine_after: float
    chance: float
    n_fit: float
    n_eval: float
    null_p95: float | None = None


@dataclass(frozen=True)
class Association:
    """Association heads (CLIP-style) trained on half of the pairs, scored on the other half."""
    retrieval: float
    retrieval_baseline: float
    pair_cosine: float
    chance: float
    final_loss: float
    n_fit: float
    n_eval: float
    null_p95: float | None = None


@dataclass(frozen=True)
class RSA:
    """Spearman correlation of the two concept-similarity matrices, against a relabelled-concepts null."""
    observed: float
    p95: float
    n_concepts: int
    interpretable: bool          # enough concepts (>= 5) for a rank correlation to mean something


@dataclass(frozen=True)
class Verdict:
    shared_space: bool           # True only when the call is "yes"
    alignable: bool
    structure: dict[str, bool]   # {"mutual_knn", "cka", "rsa"}: relational structure above its null
    text: list[str]              # the plain-language lines, each quoting its numbers
    # "yes" / "no" / "inconclusive": the 95% interval of the accuracy above, below or across the null's p95
    shared_space_call: str = ""
    alignable_call: str = ""
    intervals: dict[str, list[float]] = field(default_factory=dict)   # {"retrieval_raw": [low, high], ...}


@dataclass(frozen=True)
class PairResult:
    """Every metric for one modality pair, each with its null, the controls and the verdict."""
    pair: str
    sources: list[str]
    n_pairs: int
    concepts: dict[str, int]
    mutual_knn: MutualKNN
    cka: CKA
    retrieval_raw: RawRetrieval
    procrustes: Procrustes
    association: Association
    rsa: RSA
    verdict: Verdict | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SkippedPair:
    """A pair that could not be compared (e.g. no concept with enough samples on both sides)."""
    pair: str
    skipped: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AlignmentResult:
    """All compared pairs of one alignment run (``align.json``)."""
    counts: dict[str, dict[str, int]]
    sources: dict[str, str]
    pairs: dict[str, PairResult | SkippedPair]
    config: dict = field(default_factory=dict)

    @property
    def compared(self) -> dict[str, PairResult]:
        """The pairs that were compared (skipped ones left out)."""
        return {n: r for n, r in self.pairs.items() if isinstance(r, PairResult)}

    def to_json(self) -> dict:
        return {"counts": self.counts, "sources": self.sources,
                "pairs": {n: r.to_json() for n, r in self.pairs.items()}, "config": self.config}

    @classmethod
    def from_json(cls, d: dict) -> AlignmentResult:
        pairs = {n: SkippedPair(**r) if "skipped" in r else _build(PairResult, r) for n, r in d["pairs"].items()}
        return cls(d["counts"], d["sources"], pairs, d.get("config", {}))


def pair_from_json(d: dict) -> PairResult:
    """One pair's result from its ``to_json()`` form."""
    return _build(PairResult, d)
