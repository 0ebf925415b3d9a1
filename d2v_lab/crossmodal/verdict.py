"""Plain-language conclusions computed from the numbers (never a fixed sentence)."""
from __future__ import annotations

from .results import AlignmentResult, PairResult, Verdict


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def verdict(r: PairResult) -> Verdict:
    """Shared space? Alignable with paired data? Similar relational structure? Each from its null band."""
    raw, assoc, proc, knn, cka, rsa = (r.retrieval_raw, r.association, r.procrustes, r.mutual_knn, r.cka, r.rsa)
    shared = raw.observed > raw.null_p95
    alignable = assoc.retrieval > assoc.null_p95
    structure = {"mutual_knn": knn.best > knn.null_p95, "cka": cka.observed > cka.null_p95,
                 "rsa": rsa.interpretable and rsa.observed > rsa.p95}
    side = lambda above: "above" if above else "inside"  # noqa: E731
    lines = [
        (f"shared space: {'YES' if shared else 'NO'}: without any fitting, cross-modal retrieval is "
         f"{_pct(raw.observed)} (chance {_pct(raw.chance)}, null 95th percentile {_pct(raw.null_p95)}), "
         f"{side(shared)} the null band."),
        (f"alignable with paired data: {'YES' if alignable else 'NO'}: an association network fitted on "
         f"{int(assoc.n_fit)} concept pairs reaches {_pct(assoc.retrieval)} held-out retrieval (null 95th "
         f"percentile {_pct(assoc.null_p95)}); a rotation (Procrustes) reaches {_pct(proc.retrieval_after)}."),
        (f"similar relational structure (second-order, NOT a shared space): mutual kNN "
         f"{knn.best:.3f} vs null {knn.null_p95:.3f} ({side(structure['mutual_knn'])}); CKA "
         f"{cka.observed:.3f} vs null {cka.null_p95:.3f} ({side(structure['cka'])}); RSA "
         f"{rsa.observed:.2f} vs null {rsa.p95:.2f} over {rsa.n_concepts} concepts"
         + ("" if rsa.interpretable else " (too few concepts to read)") + "."),
    ]
    return Verdict(bool(shared), bool(alignable), {k: bool(v) for k, v in structure.items()}, lines)


def conclusion(result: AlignmentResult) -> str:
    """A plain-language paragraph that quotes the measured numbers; every claim in it is computed from
    ``result`` (what ``run_alignment`` returns), none is fixed text."""
    pairs = {n: r for n, r in result.compared.items() if r.verdict is not None}
    if not pairs:
        return "No modality pair had enough shared concepts to compare."
    not_shared = [n for n, r in pairs.items() if not r.verdict.shared_space]
    shared = [n for n, r in pairs.items() if r.verdict.shared_space]
    alignable = [n for n, r in pairs.items() if r.verdict.alignable]
    raw = "; ".join(f"{n}: {_pct(r.retrieval_raw.observed)} (chance {_pct(r.retrieval_raw.chance)})"
                    for n, r in pairs.items())
    fitted = "; ".join(f"{n}: {_pct(r.association.retrieval)}" for n, r in pairs.items())
    text = [f"Without any cross-modal fitting, concept retrieval across modalities is {raw}. "
            f"It is inside its null band for {len(not_shared)} of {len(pairs)} pairs"
            + (f" and above it for {', '.join(shared)}" if shared else "") + ". "]
    if len(not_shared) == len(pairs):
        text.append("So data2vec did not put the modalities in one space: one objective, separate spaces. ")
    elif shared:
        text.append(f"For {', '.join(shared)} raw retrieval exceeds both nulls: some coordinates line up "
                    f"without any pairing, which would need a cause (shared input statistics, or chance at "
                    f"{min(pairs[n].n_pairs for n in shared)} pairs) before being read as a shared space. ")
    text.append(f"Given paired concepts, a small association network trained on half of the pairs reaches "
                f"held-out retrieval of {fitted}, above its null for {len(alignable)} of {len(pairs)} pairs: "
                f"aligning the spaces takes paired data, which data2vec never sees. ")
    structure = [n for n, r in pairs.items() if r.verdict.structure["mutual_knn"] or r.verdict.structure["cka"]]
    if structure:
        text.append(f"Some relational structure is shared ({', '.join(structure)}: mutual kNN or CKA above "
                    f"their nulls): both spaces group samples by concept, which is similar geometry, not a "
                    f"shared space.")
    else:
        text.append("Neither mutual kNN nor CKA rises above its null for any pair: at this size not even the "
                    "relational structure is measurably shared.")
    return "".join(text)
