"""The joint views behind the UMAP pictures: held-out points only, shared concepts only, and the
concept-similarity matrix / nearest neighbours read from their coordinates."""
from __future__ import annotations

import numpy as np
import pytest

from d2v_lab.crossmodal.pairing import ConceptFeatures
from d2v_lab.crossmodal.views import cross_similarity, nearest, nearest_is_own_concept, umap_views
from d2v_lab.train.config import AlignConfig


def clustered(concepts: list[str], per: int, dim: int, seed: int) -> ConceptFeatures:
    rng = np.random.default_rng(seed)
    centres = {c: rng.normal(size=dim) for c in concepts}
    labels = np.repeat(concepts, per)
    x = np.stack([centres[c] for c in labels]) + 0.1 * rng.normal(size=(len(labels), dim))
    return ConceptFeatures("m", x[None], labels, "src")


def test_views_show_held_out_points_of_shared_concepts():
    feats = {"image": clustered(["cat", "dog", "ship"], 20, 16, 0),
             "text_word": clustered(["cat", "dog", "frog"], 20, 12, 1),      # frog: text only
             "audio": clustered(["cat", "dog", "one"], 20, 8, 2)}           # one: audio only
    views = umap_views(feats, AlignConfig(per_concept=20, umap_points=90, common_dim=4))
    for view in views.values():
        assert set(view["concept"]) == {"cat", "dog"}                     # shared by >= 2 modalities
        assert view["xy"].shape == (len(view["concept"]), 2) and len(view["z"]) == len(view["concept"])
        assert (view["modality"] == "image").sum() <= 20                  # at most the held-out half of 40
    # after the heads (fitted on the other halves) the same concept lines up across modalities
    rows, cols, sim = cross_similarity(views["associated"], "image", "text_word")
    assert rows == cols == ["cat", "dog"] and np.diag(sim).min() > sim[0, 1] and np.diag(sim).min() > sim[1, 0]


def test_cross_similarity_and_nearest_on_a_known_space():
    z = np.array([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9], [1.0, 0.05], [0.05, 1.0]])
    view = {"z": z, "modality": np.array(["image", "image", "image", "image", "text", "text"]),
            "concept": np.array(["cat", "cat", "dog", "dog", "cat", "dog"])}
    rows, cols, sim = cross_similarity(view, "image", "text")
    assert rows == cols == ["cat", "dog"]
    assert sim[0, 0] > 0.99 and sim[1, 1] > 0.99 and sim[0, 1] < 0.2
    assert nearest(view, 0, "text", k=2) == ["cat", "dog"]


def test_nearest_is_own_concept_counts_hits_and_their_chance():
    # images: a cat near the cat word, a dog near the cat word (a miss), a dog near the dog word
    z = np.array([[1.0, 0], [0.95, 0.05], [0, 1.0], [1.0, 0.02], [0.02, 1.0], [0.03, 1.0]])
    view = {"z": z, "modality": np.array(["image", "image", "image", "text", "text", "text"]),
            "concept": np.array(["cat", "dog", "dog", "cat", "dog", "dog"])}
    names, hits, chance = nearest_is_own_concept(view, "image", "text")
    assert names.tolist() == ["cat", "dog", "dog"]
    assert hits.tolist() == [True, False, True]
    assert chance == pytest.approx([1 / 3, 2 / 3, 2 / 3])
