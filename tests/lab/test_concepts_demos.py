"""Concept words (matching and masking), the EMA-teacher demos, the per-block target statistics, and
the tour's report / summary table built from a hand-made summary."""
from __future__ import annotations

import math

import pytest
import torch

from d2v_lab.crossmodal.results import AlignmentResult, SkippedPair
from d2v_lab.data.concepts import CONCEPT_WORDS, concept_pattern, concepts_in, first_mentions, mask_concept
from d2v_lab.evaluate.results import ProbeResult
from d2v_lab.lab.demos import (
    DEMO_TAUS,
    cifar_probe,
    collapse_demo,
    demo_config,
    layer_target_stats,
    teacher_dynamics,
)
from d2v_lab.lab.report import render_report, summary_table
from d2v_lab.lab.tour import TourSummary, TrainingSummary
from d2v_lab.model.ema import tau_at
from d2v_lab.train.checkpoint import build_model
from d2v_lab.train.inputs import pretraining_data
from d2v_lab.train.loop import TrainingStopped, lr_at, pretrain
from d2v_lab.train.profiles import get_profile

from builders import pair_result, task_result

# --- concepts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,concept", [
    ("Puppies", "dog"), ("cats", "cat"), ("boat", "ship"), ("The KITTEN slept", "cat"), ("two ponies", "horse"),
    ("an aeroplane!", "airplane"), ("Cars.", "automobile"), ("deer", "deer"), ("(frogs)", "frog"),
    ("the dog's ball", "dog"), ("cat-like", "cat"),
])
def test_concept_pattern_matches_forms_whole_word_any_case(text, concept):
    assert concept_pattern(concept).search(text)


@pytest.mark.parametrize("text,concept", [
    ("catalog", "cat"), ("dogma", "dog"), ("carpet", "automobile"), ("scatter", "cat"), ("shipment", "ship"),
    ("boats2", "ship"), ("birdcage", "bird"), ("planet", "airplane"), ("deers", "deer"),
])
def test_concept_pattern_ignores_substrings(text, concept):
    assert not concept_pattern(concept).search(text)


def test_concepts_in_lists_every_mentioned_concept_in_canonical_order():
    assert concepts_in("A boat, two Cats and a puppy.") == ["cat", "dog", "ship"]
    assert concepts_in("The catalog of dogmas is on the carpet.") == []
    assert concepts_in("one cat", ("one", "cat", "two")) == ["one", "cat"]


def test_concepts_in_equals_one_search_per_concept():
    """The one-scan implementation finds exactly what searching each concept's own pattern finds."""
    import random
    rng = random.Random(0)
    words = ["cat", "Cats", "kitty", "kitties", "dogs", "Puppy", "puppies", "pup", "deer", "deers", "plane",
             "planes", "airplane", "boat", "sailboats", "truck", "trucks", "frog", "froggy", "pony",
             "ponies", "catalog", "dogma", "carpet", "boating", "horsey", "birdies", "bird", "car", "cars",
             "scar", "one", "two", "the", "and", "ran,", "cat.", "(dog)", "bird's", "car-wash"]
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(2000)]
    for concepts in (tuple(CONCEPT_WORDS), ("one", "cat", "two"), ("dog",)):
        for text in texts:
            assert concepts_in(text, concepts) == [c for c in concepts if concept_pattern(c).search(text)], text
            for c, match in first_mentions(text, concepts).items():   # and the same first mention
                assert match.span() == concept_pattern(c).search(text).span(), (text, c)
    assert list(CONCEPT_WORDS)[:3] == ["airplane", "automobile", "bird"]


def test_mask_concept_removes_every_mention_and_the_space_before_it():
    text = "Cat naps. The cat saw two CATS and a kitten, then a dog."
    masked = mask_concept(text, "cat")
    assert masked == "[MASK] naps. The[MASK] saw two[MASK] and a[MASK], then a dog."
    assert not concept_pattern("cat").search(masked)
    assert concept_pattern("dog").search(masked)                       # other concepts are left alone
    assert mask_concept("The catalog is here.", "cat") == "The catalog is here."
    assert mask_concept("two puppies", "dog", mask_token="<m>") == "two<m>"


# --- demos --------------------------------------------------------------------------------------------

@pytest.fixture
def image_data(fake_root):
    return pretraining_data(demo_config("image"), fake_root, progress=False)


def test_demo_config_constant_tau_constant_lr_and_no_collapse_guard():
    cfg = demo_config("text", tau=0.9, top_k=1, lr=3e-3)
    assert (cfg.d2v.tau0, cfg.d2v.tau_end, cfg.d2v.tau_init_share, cfg.d2v.top_k) == (0.9, 0.9, 0.0, 1)
    assert [tau_at(s, cfg.d2v.tau0, cfg.d2v.tau_end, cfg.d2v.tau_ramp_steps) for s in (0, 50, 500)] == [0.9] * 3
    assert cfg.train.min_target_std == 0.0 and cfg.train.warmup_steps == 0
    # the loop's own schedule stays at lr over the first 500 updates
    assert [lr_at(s, cfg.train) for s in range(500)] == pytest.approx([3e-3] * 500, rel=1e-12, abs=0)
    assert cfg.encoder == get_profile("text", "ci").encoder
    assert demo_config("image").d2v.target_layer_norm == get_profile("image", "ci").d2v.target_layer_norm
    layer = demo_config("image", target_norm="layer", min_target_std=0.1)
    assert (layer.d2v.target_layer_norm, layer.d2v.target_final_norm, layer.train.min_target_std) == ("layer", "none", 0.1)


def test_teacher_dynamics_readouts_order_the_decays(image_data, fake_root):
    probe = cifar_probe(fake_root, n_memory=20, n_test=10, k=3)
    runs = {tau: teacher_dynamics("image", tau=tau, steps=8, data=image_data, probe=probe) for tau in DEMO_TAUS}
    for tau, run in runs.items():
        assert run["tau"] == tau and run["modality"] == "image" and run["stopped"] is None
        assert run["step"] == list(range(1, 9))
        assert all(len(run[k]) == 8 for k in ("lr", "loss", "target_std", "target_drift", "teacher_distance",
                                                 "student_distance"))
        assert run["lr"] == pytest.approx([get_profile("image", "ci").train.lr] * 8, rel=1e-12, abs=0)  # as logged
        assert all(math.isfinite(v) for v in run["loss"] + run["target_std"] + run["target_drift"])
        assert 0 < run["student_distance"][0] < run["student_distance"][-1]           # the student always learns
    frozen, copying = runs[1.0], runs[0.0]
    assert frozen["teacher_distance"] == [0.0] * 8 and frozen["target_drift"] == [0.0] * 8  # exactly: never moves
    assert frozen["knn_teacher"] == frozen["knn_initial"]                              # it IS the initial network
    assert copying["teacher_distance"] == copying["student_distance"]                   # tau = 0: a copy
    assert all(d > 0 for d in copying["target_drift"])
    # the further from 1 the decay, the further the teacher has moved from its initial weights
    final = [runs[tau]["teacher_distance"][-1] for tau in sorted(DEMO_TAUS, reverse=True)]
    assert final[0] == 0.0 and final == sorted(final) and len(set(final)) == len(final)
    assert runs[0.98]["memory"] == pytest.approx(50) and frozen["memory"] == math.inf
    assert all(0 <= runs[tau]["knn_teacher"] <= 1 for tau in DEMO_TAUS)


def test_collapse_config_collapses_and_the_guard_stops_it_after_the_first_step(image_data, tmp_path):
    """Layer-norm targets with a teacher that copies the student lose their spread across positions
    within a few dozen updates; the loop's guard (at the profile's threshold) raises TrainingStopped."""
    cfg = demo_config("image", tau=0.0, target_norm="layer", min_target_std=0.1)
    with pytest.raises(TrainingStopped, match=r"^step (\d+): target std 0\.0\d+ < 0\.1: .*collapsed") as stop:
        pretrain(cfg, tmp_path, data=image_data, progress=False, stop_after=40)
    assert int(str(stop.value).split()[1].rstrip(":")) > 1


def test_collapse_demo_crosses_the_threshold_with_and_without_the_guard(image_data):
    demo = collapse_demo(steps=40, data=image_data)
    guarded, free = demo["guarded"], demo["unguarded"]
    assert guarded["min_target_std"] == free["min_target_std"] == get_profile("image", "ci").train.min_target_std
    stop = guarded["step"][-1]
    assert 1 < stop < 40 and guarded["stopped"].startswith(f"step {stop}: target std ")
    assert "collapsed" in guarded["stopped"]
    assert guarded["target_std"][0] > 0.1 > guarded["target_std"][-1]                  # crossed, not started below
    assert all(s >= 0.1 for s in guarded["target_std"][:-1])                          # it stops at the first crossing
    assert free["stopped"] is None and free["step"][-1] == 40
    assert free["target_std"][:stop] == guarded["target_std"]                          # the same run until the stop
    assert free["target_std"][-1] < guarded["target_std"][-1] and free["loss"][-1] < free["loss"][0] / 10


def test_layer_target_stats_normalised_scale():
    torch.manual_seed(0)
    cfg = get_profile("image", "ci")
    model = build_model(cfg)
    x = torch.randint(0, 256, (8, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    stats = layer_target_stats(model, x, "instance")
    assert [s["block"] for s in stats] == list(range(1, cfg.encoder.depth + 1))
    for s in stats:
        assert s["normalised_std"] == pytest.approx(1.0, abs=0.05)
        assert 0 < s["raw_std"] <= s["raw_rms"] * (1 + 1e-6) and s["raw_std"] < 0.5   # raw FFN outputs are small
    none = layer_target_stats(model, x, "none")
    assert all(s["normalised_std"] == pytest.approx(s["raw_std"]) for s in none)
    with torch.no_grad():
        ffn = model.teacher(x, return_layers=True).ffn
    assert [s["raw_std"] for s in stats] == pytest.approx([float(a.std()) for a in ffn])


# --- the tour's report ---------------------------------------------------------------------------

def probes() -> dict:
    return {
        "image": ProbeResult([task_result("cifar10", "image", 0.1, (0.417, 0.253, 0.306), (0.382, 0, 0), 0.559, 2000)],
                             {}, "root"),
        "audio": ProbeResult([task_result("speechcommands_keywords", "audio", 1 / 11, (0.451, 0.362, 0.288),
                                          (0.43, 0, 0), 0.589, 559, "ten keywords + unknown"),
                              task_result("fsdd_digits", "audio", 0.1, (0.734, 0.512, 0.288), (0.645, 0, 0), 0.55,
                                          500, "one test voice"),
                              task_result("fsdd_digits_unsupervised", "audio", 0.1, (0.734, 0.512, 0.288),
                                          (0.645, 0, 0), None, 500, "no reference")], {}, "root"),
    }


def summary(**fields) -> TourSummary:
    return TourSummary("ci", "/tmp/tour-out", **fields)


SUMMARY = summary(
    pretraining={"image": TrainingSummary(steps=20, version=2, final_loss=0.5, heldout_loss_first=1.2345,
                                          heldout_loss_last=0.5432, target_std_last=0.812, min_target_std=0.701,
                                          samples_per_s=123.4, encoder="2 blocks x 64 dims")},
    probes=probes(),
    alignment=AlignmentResult({}, {}, {
        "image-text_word": pair_result(n_pairs=180, concepts={"cat": 90, "dog": 90},
                                       verdict={"text": ["shared space: NO: retrieval is 47.2%",
                                                         "alignable: YES: 81.9%"]}),
        "audio-image": SkippedPair("audio-image", "no concept has >= 5 samples")}))


def test_summary_table_has_every_accuracy_as_a_percentage():
    table = summary_table(SUMMARY.probes).splitlines()
    assert len(table) == 2 + 4                                          # header, rule, one row per task
    assert table[0].endswith("| discriminates |")
    row = {line.split("|")[2].strip().split(" (")[0]: line for line in table[2:]}
    assert set(row) == {"cifar10", "speechcommands_keywords", "fsdd_digits", "fsdd_digits_unsupervised"}
    for cell in ("10.0%", "**41.7%**", "25.3%", "30.6%", "55.9%", "38.2%", "n_test=2000", "| yes (+30.6) |"):
        assert cell in row["cifar10"]
    for cell in ("9.1%", "**45.1%**", "36.2%", "28.8%", "58.9%", "43.0%", "| yes (+22.7) |"):
        assert cell in row["speechcommands_keywords"]
    for cell in ("**73.4%**", "51.2%", "28.8%", "55.0%", "64.5%", "| **NO** (+3.8) |"):
        assert cell in row["fsdd_digits"]                               # 3.8 points < 15: not evidence
    assert row["fsdd_digits_unsupervised"].endswith("| n/a | 64.5% | n/a |")    # no supervised run: unknown
    assert row["cifar10"].startswith("| image |") and row["fsdd_digits"].startswith("| audio |")


def test_render_report_quotes_the_numbers_and_the_verdicts():
    report = render_report(SUMMARY)
    assert report.startswith("# d2v_lab tour report (ci profile)")
    assert summary_table(SUMMARY.probes) in report
    assert "- shared space: NO: retrieval is 47.2%" in report and "- alignable: YES: 81.9%" in report
    assert "### image-text_word (180 concept pairs over 2 concepts)" in report
    assert "Skipped: no concept has >= 5 samples" in report
    assert "1.234 -> 0.543" in report and "0.812 / 0.701" in report
    assert "- image: best layer 2 (mean pooling)" in report
    assert "- audio: best layer 2 (mean pooling); ten keywords + unknown" in report
    assert "  - fsdd_digits: one test voice" in report
    assert ("  - fsdd_digits: discriminates: NO (supervised 55.0% vs random init 51.2%: +3.8 points, < 15): "
            "this task cannot tell a good encoder from a random one here; not evidence either way") in report
    assert "speechcommands_keywords: discriminates" not in report        # only the tasks that fail are listed
    assert "same way" in report and ">= 15 points" in report
    assert "## Time per stage" not in report                            # no timings in this summary
    minimal = render_report(TourSummary("cpu", "x"))
    assert "## Linear probes" not in minimal and "## Do the three modalities" not in minimal
