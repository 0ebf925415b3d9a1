"""Across modalities: metrics with their nulls, alignment controls (Procrustes, association heads),
concept-paired features, the experiment and its verdicts. Depends on ``d2v_lab.evaluate`` and below."""
