"""Plain-language conclusions computed from the numbers (never a fixed sentence). Every accuracy carries
its 95% Wilson interval over the pairs it was measured on; a call is "yes" when the whole interval lies
above the null band (its 95th percentile), "no" when it lies inside it, and "inconclusive" when it
straddles it: then the test set is too small to tell."""
from __future__ import annotations

from d2v_lab.evaluate.stats import call, wilson_interval

from .results import AlignmentResult, PairResult, Verdict

WHERE = {"yes": "above the null band", "no": "inside the null band",
         "inconclusive": "its interval overlaps the null band: too few pairs to tell"}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _span(interval) -> str:
    return f"{100 * interval[0]:.1f}-{100 * interval[1]:.1f}%"


def verdict(r: PairResult) -> Verdict:
    """Shared space? Alignable with paired data? Similar relational structure? Each from its null band."""
    raw, assoc, proc, knn, cka, rsa = (r.retrieval_raw, r.association, r.procrustes, r.mutual_knn, r.cka, r.rsa)
    raw_ci = wilson_interval(raw.observed, r.n_pairs)               # raw retrieval uses every pair
    assoc_ci = wilson_interval(assoc.retrieval, int(assoc.n_eval))  # the heads are scored on the held-out half
    shared, alignable = call(raw_ci, raw.null_p95), call(assoc_ci, assoc.null_p95)
    structure = {"mutual_knn": knn.best > knn.null_p95, "cka": cka.observed > cka.null_p95,
                 "rsa": rsa.interpretable and rsa.observed > rsa.p95}
    side = lambda above: "above" if above else "inside"  # noqa: E731
    # the layer search: say which layer pair won, and that its null took the same maximum
    searched = lambda layers: (f" at the best layer pair ({layers[0]}, {layers[1]}); the null takes the same "  # noqa: E731
                               f"maximum over all layer pairs" if layers else "")
    lines = [
        (f"shared space: {shared.upper()}: without any fitting, cross-modal retrieval is "
         f"{_pct(raw.observed)}{searched(raw.layers)} (95% interval {_span(raw_ci)} over {r.n_pairs} pairs; "
         f"chance {_pct(raw.chance)}, "
         f"null 95th percentile {_pct(raw.null_p95)}): {WHERE[shared]}."),
        (f"alignable with paired data: {alignable.upper()}: an association network fitted on "
         f"{int(assoc.n_fit)} concept pairs reaches {_pct(assoc.retrieval)} retrieval on {int(assoc.n_eval)} "
         f"held-out pairs (95% interval {_span(assoc_ci)}; null 95th percentile {_pct(assoc.null_p95)}): "
         f"{WHERE[alignable]}; a rotation (Procrustes) reaches {_pct(proc.retrieval_after)}."),
        (f"similar relational structure (second-order, NOT a shared space): mutual kNN "
         f"{knn.best:.3f} vs null {knn.null_p95:.3f} ({side(structure['mutual_knn'])}); CKA "
         f"{cka.observed:.3f}{f' (best layer pair {cka.layers[0]}, {cka.layers[1]})' if cka.layers else ''} vs null {cka.null_p95:.3f} ({side(structure['cka'])}); RSA "
         f"{rsa.observed:.2f} vs null {rsa.p95:.2f} over {rsa.n_concepts} concepts"
         + ("" if rsa.interpretable else " (too few concepts to read)") + "."),
    ]
    return Verdict(shared == "yes", alignable == "yes", {k: bool(v) for k, v in structure.items()}, lines,
                   shared, alignable, {"retrieval_raw": list(raw_ci), "association": list(assoc_ci)})


def _names(pairs: list[str]) -> str:
    return ", ".join(pairs)


def conclusion(result: AlignmentResult) -> str:
    """A plain-language paragraph that quotes the measured numbers; every claim in it is computed from
    ``result`` (what ``run_alignment`` returns), none is fixed text."""
    pairs = {n: r for n, r in result.compared.items() if r.verdict is not None}
    if not pairs:
        return "No modality pair had enough shared concepts to compare."
    calls = {n: r.verdict.shared_space_call or ("yes" if r.verdict.shared_space else "no") for n, r in pairs.items()}
    shared = [n for n, c in calls.items() if c == "yes"]
    unsure = [n for n, c in calls.items() if c == "inconclusive"]
    inside = [n for n, c in calls.items() if c == "no"]
    alignable = [n for n, r in pairs.items() if r.verdict.alignable]
    raw = "; ".join(f"{n}: {_pct(r.retrieval_raw.observed)} (chance {_pct(r.retrieval_raw.chance)})"
                    for n, r in pairs.items())
    fitted = "; ".join(f"{n}: {_pct(r.association.retrieval)}" for n, r in pairs.items())
    text = [f"Without any cross-modal fitting, concept retrieval across modalities is {raw}. "
            f"Its 95% interval lies inside the null band for {len(inside)} of {len(pairs)} pairs"
            + (f", above it for {_names(shared)}" if shared else "")
            + (f", and straddles it for {_names(unsure)} (too few pairs to tell)" if unsure else "") + ". "]
    if len(inside) == len(pairs):
        text.append("So data2vec did not put the modalities in one space: one objective, separate spaces. ")
    elif shared:
        text.append(f"For {_names(shared)} raw retrieval exceeds both nulls: some coordinates line up "
                    f"without any pairing, which would need a cause (shared input statistics, or chance at "
                    f"{min(pairs[n].n_pairs for n in shared)} pairs) before being read as a shared space. ")
    elif not shared:
        text.append("No pair shows a shared space; the inconclusive ones need more paired concepts to decide. ")
    text.append(f"Given paired concepts, a small association network trained on half of the pairs reaches "
                f"held-out retrieval of {fitted}, confidently above its null for {len(alignable)} of {len(pairs)} "
                f"pairs: aligning the spaces takes paired data, which data2vec never sees. ")
    structure = [n for n, r in pairs.items() if r.verdict.structure["mutual_knn"] or r.verdict.structure["cka"]]
    if structure:
        text.append(f"Some relational structure is shared ({_names(structure)}: mutual kNN or CKA above "
                    f"their nulls): both spaces group samples by concept, which is similar geometry, not a "
                    f"shared space.")
    else:
        text.append("Neither mutual kNN nor CKA rises above its null for any pair: at this size not even the "
                    "relational structure is measurably shared.")
    return "".join(text)
