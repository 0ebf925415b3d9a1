"""Hugging Face encoders (``evaluate/hf.py``), with no network: tiny random-weight data2vec-vision /
-text / -audio models, each saved to a folder with its preprocessing (image processor, tokenizer,
feature extractor) as the released ones are, and loaded by path. Features per layer and their pooling;
the alignment end to end on them (CLI and ``lab.real_scale``) and its known answer for one model on
the same inputs twice; the clear errors for a missing extra, an unreachable model id, a wrong modality."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch

from d2v_lab.cli import main
from d2v_lab.crossmodal import pairing
from d2v_lab.crossmodal.experiment import compare
from d2v_lab.crossmodal.pairing import ConceptFeatures, concept_pairs
from d2v_lab.evaluate import hf
from d2v_lab.lab import real_scale

from builders import write_cifar, write_fsdd, write_speech_commands, write_tinystories

try:
    import transformers
except ImportError:  # CI installs the hf extra (README's test command): there a missing one is a failure
    if os.environ.get("CI"):
        raise
    pytest.skip('transformers is not installed: pip install -e ".[test,hf]"', allow_module_level=True)

WIDTH, BLOCKS = 32, 2
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def _tiny(**kw) -> dict:
    return dict(hidden_size=WIDTH, num_hidden_layers=BLOCKS, num_attention_heads=2, intermediate_size=37, **kw)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    return build_models(tmp_path_factory.mktemp("hf_models"))


def build_models(root) -> dict[str, str]:
    """{"image", "text", "audio"}: folders holding a tiny random data2vec model and its preprocessing."""
    torch.manual_seed(0)
    folders = {m: root / m for m in ("image", "text", "audio")}

    image_size = 16                                   # CIFAR's 32x32 is resized to this, as 32 -> 224 for the base
    transformers.Data2VecVisionModel(transformers.Data2VecVisionConfig(
        image_size=image_size, patch_size=4, **_tiny())).save_pretrained(folders["image"])
    processor = getattr(transformers, "BeitImageProcessorPil", None) or transformers.BeitImageProcessor
    processor(do_resize=True, size={"height": image_size, "width": image_size}, do_center_crop=False,
              image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folders["image"])

    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["Once upon a time a little dog and a cat saw a frog and a big red truck."] * 20,
                            vocab_size=300, special_tokens=SPECIALS)
    bpe.post_processor = RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")),
                                           trim_offsets=True)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                               cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                               unk_token="<unk>", mask_token="<mask>")
    tok.save_pretrained(folders["text"])
    transformers.Data2VecTextModel(transformers.Data2VecTextConfig(
        vocab_size=len(tok), max_position_embeddings=hf.TEXT_TOKENS + 4, pad_token_id=tok.pad_token_id,
        **_tiny())).save_pretrained(folders["text"])

    transformers.Data2VecAudioModel(transformers.Data2VecAudioConfig(
        conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4), num_conv_pos_embeddings=2,
        conv_pos_kernel_size=5, num_conv_pos_embedding_groups=2, **_tiny())).save_pretrained(folders["audio"])
    transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                          return_attention_mask=True).save_pretrained(folders["audio"])
    return {m: str(f) for m, f in folders.items()}


@pytest.fixture(scope="module")
def encoders(models) -> dict[str, hf.HFEncoder]:
    return {m: hf.load_encoder(folder, m, device="cpu") for m, folder in models.items()}


@pytest.fixture
def concept_root(tmp_path, monkeypatch):
    """Enough of every dataset for concept pairs (>= 5 samples per concept on both sides)."""
    root = tmp_path / "data"
    write_cifar(root, n_train_batches=1, per_batch=100, n_test=60)          # 6 test images per class
    write_tinystories(root)                                                  # dog, cat, truck, frog stories
    write_speech_commands(root, speakers=("aaa", "bbb", "eee", "fff", "ggg", "hhh", "ccc", "ddd"))
    write_fsdd(root)
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    return root


# --- naming and loading -------------------------------------------------------------------------------

def test_which_names_are_hf_encoders(models, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"modality": "image"}))    # a d2v_lab run folder's config
    (run / "checkpoint.pt").write_bytes(b"")
    assert hf.is_hf_spec("hf:facebook/data2vec-vision-base")
    assert all(hf.is_hf_spec(folder) for folder in models.values())
    assert not hf.is_hf_spec(run) and not hf.is_hf_spec(tmp_path / "nothing")


def test_each_model_loads_with_its_preprocessing(encoders):
    assert {m: e.modality for m, e in encoders.items()} == {"image": "image", "text": "text", "audio": "audio"}
    assert all(e.n_layers == BLOCKS + 1 for e in encoders.values())
    assert encoders["text"].preprocess.mask_token == "<mask>"
    assert encoders["audio"].preprocess.sampling_rate == 16000 and encoders["audio"].note == ""


# --- features per layer ---------------------------------------------------------------------------------

def test_image_features_are_patch_means_per_layer(encoders):
    enc = encoders["image"]
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    feats = hf.image_features(enc, images, batch_size=2, progress=False)
    assert set(feats) == {"mean"} and feats["mean"].shape == (BLOCKS + 1, 5, WIDTH)
    pixels = enc.preprocess(images=list(images.transpose(0, 2, 3, 1)), input_data_format="channels_last",
                            return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape[-2:]) == (16, 16)                               # resized to the model's input
    with torch.no_grad():
        hidden = enc.model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert hidden[0].shape[1] == 1 + 16                                       # [CLS] + 4x4 patches
    expected = np.stack([h[:, 1:].mean(1).numpy() for h in hidden])           # [CLS] left out
    np.testing.assert_allclose(feats["mean"], expected, atol=1e-5)


def test_text_features_read_the_word_or_the_window(encoders):
    enc = encoders["text"]
    texts = ["Once upon a time a little dog saw a frog.", "A cat.", "The big red truck and the cat saw a dog."]
    spans = [(t.index(w), t.index(w) + len(w)) for t, w in zip(texts, ("dog", "cat", "truck"))]
    inputs, keep = hf.text_windows(enc.preprocess, texts, spans, select="span")
    for row, k, word in zip(inputs["input_ids"], keep, ("dog", "cat", "truck")):
        picked = enc.preprocess.convert_tokens_to_string(enc.preprocess.convert_ids_to_tokens(row[k > 0].tolist()))
        assert picked.strip() == word
    _, window = hf.text_windows(enc.preprocess, texts, spans, select="window")
    special = inputs["input_ids"] == enc.preprocess.cls_token_id
    assert not window[special].any() and (window.sum(1) == inputs["attention_mask"].sum(1) - 2).all()

    feats = hf.text_features(enc, texts, spans, batch_size=2, progress=False)["mean"]
    assert feats.shape == (BLOCKS + 1, 3, WIDTH)
    with torch.no_grad():
        hidden = enc.model(**inputs, output_hidden_states=True).hidden_states
    w = keep / keep.sum(1, keepdim=True)
    expected = np.stack([torch.einsum("bt,btd->bd", w, h).numpy() for h in hidden])
    np.testing.assert_allclose(feats, expected, atol=1e-5)                    # batches of 2 pad differently


def test_text_window_is_cut_around_the_word(encoders):
    tok = encoders["text"].preprocess
    text = " ".join(["little"] * 200) + " dog " + " ".join(["frog"] * 200)
    at = text.index("dog")
    inputs, keep = hf.text_windows(tok, [text], [(at, at + 3)], max_tokens=40, select="span")
    assert inputs["input_ids"].shape[1] <= 40 and keep.sum() >= 1
    where = int(keep[0].nonzero()[0])
    assert 5 <= where <= 15                        # a quarter of the window before the word, as for our models


def test_audio_features_average_the_frames(encoders):
    enc = encoders["audio"]
    waves = np.random.default_rng(0).normal(size=(4, 16000)).astype(np.float32) * 0.1
    feats = hf.audio_features(enc, waves, batch_size=3, progress=False)["mean"]
    assert feats.shape == (BLOCKS + 1, 4, WIDTH)
    inputs = enc.preprocess(list(waves), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        hidden = enc.model(input_values=inputs["input_values"], output_hidden_states=True).hidden_states
    np.testing.assert_allclose(feats, np.stack([h.mean(1).numpy() for h in hidden]), atol=1e-4)


# --- the alignment on Hugging Face encoders ------------------------------------------------------------

def test_one_model_on_the_same_inputs_twice_is_one_space(models, concept_root):
    """The known answer: two separately loaded copies of one model on the same images give identical
    features; paired sample by sample (as in test_crossmodal), every metric finds one shared space,
    with the layer search too."""
    fa = pairing.image_features(hf.load_encoder(models["image"], "image", "cpu"), concept_root, per_concept=100)
    fb = pairing.image_features(hf.load_encoder(models["image"], "image", "cpu"), concept_root, per_concept=100)
    np.testing.assert_array_equal(fa.layers, fb.layers)
    assert fa.layers.shape == (BLOCKS + 1, 60, WIDTH) and fa.source.endswith(f"via hf:{models['image']}")
    ia, ib, _ = concept_pairs(fa, fb, per_concept=100, seed=0)
    same = np.empty_like(fb.layers)
    same[:, ib] = fa.layers[:, ia]                      # b's partner of a's row i IS a's row i
    fb = ConceptFeatures("b", same, fb.concepts, fb.source)
    for search in (False, True):
        r = compare(fa, fb, n_shuffles=50, common_dim=8, layer_search=search)
        assert r.retrieval_raw.observed == 1.0 and r.verdict.shared_space_call == "yes"
        assert r.mutual_knn.best == 1.0 and r.cka.observed == pytest.approx(1.0, abs=1e-9)
        assert (r.retrieval_raw.layers is not None) == search
        if search:
            assert "best layer pair" in r.verdict.text[0]


def test_align_cli_on_hf_encoders_with_the_layer_search(models, concept_root, tmp_path, capsys):
    out = tmp_path / "aligned"
    rc = main(["align", "--image", models["image"], "--text", models["text"], "--audio", models["audio"],
               "--out", str(out), "--profile", "ci", "--layer-search", "--json"])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((out / "align.json").read_text())
    assert saved["config"]["layer_search"] is True
    assert all("via hf:" in s for s in saved["sources"].values())
    compared = {n: p for n, p in saved["pairs"].items() if "skipped" not in p}
    # the generated stories give story vectors of only 2 concepts ("One day" names a digit): that pair is skipped
    assert "image-text_word" in compared and "audio-text_word" in compared
    for p in compared.values():
        n_a, n_b = len(p["mutual_knn"]["all_layer_pairs"]), len(p["mutual_knn"]["all_layer_pairs"][0])
        assert (n_a, n_b) == (BLOCKS + 1, BLOCKS + 1)
        assert p["retrieval_raw"]["layers"] is not None and p["cka"]["layers"] is not None
        assert p["verdict"]["shared_space_call"] in ("yes", "no", "inconclusive")
    assert (out / "umap_raw.png").is_file()


def test_real_scale_runs_when_the_models_are_here_and_says_how_to_get_them_otherwise(models, concept_root,
                                                                                        tmp_path, monkeypatch):
    said = []
    monkeypatch.setattr(real_scale, "missing_models", lambda: list(hf.RELEASED.values()))
    assert real_scale.real_scale_alignment("ci", tmp_path / "rs", log=said.append) is None
    text = "\n".join(said)
    for model_id in hf.RELEASED.values():
        assert f"huggingface-cli download {model_id}" in text and f"hf:{model_id}" in text
    assert hf.INSTALL in text and "d2v-lab align" in text

    monkeypatch.setattr(real_scale, "missing_models", lambda: [])
    monkeypatch.setattr(real_scale, "RELEASED", models)     # the tiny models stand in for the released ones
    monkeypatch.setattr(real_scale, "HF_PREFIX", "")         # folders, named without "hf:"
    result = real_scale.real_scale_alignment("ci", tmp_path / "rs", progress=False, log=said.append)
    assert result is not None and (tmp_path / "rs" / "align.json").is_file()
    assert result.compared["image-text_word"].verdict.text[0].startswith("shared space: ")


def test_missing_models_without_a_cache_is_cheap_and_lists_all_three(monkeypatch, tmp_path):
    monkeypatch.setattr(hf, "is_cached", lambda model_id: False)
    assert real_scale.missing_models() == list(hf.RELEASED.values())


# --- the probe on Hugging Face encoders -----------------------------------------------------------------

@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_probe_cli_on_an_hf_encoder(models, concept_root, tmp_path, capsys, modality):
    out = tmp_path / "probe"
    rc = main(["probe", "--checkpoint", models[modality], "--out", str(out), "--profile", "ci", "--json"])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((out / "probe.json").read_text())
    assert (out / "probe.png").is_file()
    tasks = {"image": ["cifar10"], "text": ["tinystories_concepts"],
             "audio": ["speechcommands_keywords", "fsdd_digits"]}[modality]
    probed = [saved] + saved["extra_tasks"]                   # probe.json: the main task at the top level
    assert [t["task"] for t in probed] == tasks
    for t in probed:
        assert t["checkpoint"] == f"hf:{models[modality]}" and t["supervised"] is None
        assert "no supervised reference" in t["note"]
        assert all(0 <= t["linear"][s] <= 1 for s in ("pretrained", "random_init", "raw_input"))
        assert 0 <= t["selected"]["pretrained"]["layer"] <= BLOCKS and len(t["per_layer"]) == BLOCKS + 1


def test_probe_of_an_hf_encoder_needs_out(models, capsys):
    assert main(["probe", "--checkpoint", models["image"]]) == 2
    assert "--out is needed" in capsys.readouterr().err


# --- clear errors ---------------------------------------------------------------------------------------

def test_missing_extra_names_the_install_command(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)                  # "import transformers" fails
    with pytest.raises(hf.EncoderUnavailable, match=r'pip install -e "\.\[hf\]"'):
        hf.load_encoder("hf:facebook/data2vec-vision-base")
    assert not hf.transformers_installed() and real_scale.missing_models() == list(hf.RELEASED.values())
    rc = main(["align", "--image", "hf:facebook/data2vec-vision-base", "--text", "hf:facebook/data2vec-text-base",
               "--audio", "hf:facebook/data2vec-audio-base", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and 'pip install -e ".[hf]"' in err


def test_unreachable_model_id_names_the_id_and_how_to_get_it(monkeypatch, capsys, tmp_path, models):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")                               # never wait for a network here
    with pytest.raises(hf.EncoderUnavailable) as e:
        hf.load_encoder("hf:d2v-lab-tests/no-such-model")
    assert "hf:d2v-lab-tests/no-such-model" in str(e.value)
    assert "huggingface-cli download d2v-lab-tests/no-such-model" in str(e.value)
    rc = main(["align", "--image", "hf:d2v-lab-tests/no-such-model", "--text", models["text"],
               "--audio", models["audio"], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "huggingface-cli download d2v-lab-tests/no-such-model" in err


def test_a_model_of_another_modality_is_refused(models):
    with pytest.raises(hf.EncoderUnavailable, match="modality 'image' .* given as the text encoder"):
        hf.load_encoder(models["image"], "text")
