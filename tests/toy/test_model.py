"""The shipped pretrained toy Wan model (trainer/assets/toy_wan) and the script that trains it."""

import json

import pytest
import torch

from trainer.engine.models import TOY_MODEL_DIR, load_pipeline
from trainer.toy import model as toy_model
from trainer.toy import world as toy_world
from trainer.toy.model import caption_following


def test_toy_model_loads_through_the_diffusers_folder_path():
    """"toy" is only a name for the shipped folder: same loader, same weights as its path."""
    for name in ("model_index.json", "transformer", "text_encoder", "tokenizer", "vae", "scheduler"):
        assert (TOY_MODEL_DIR / name).exists(), name
    size = sum(p.stat().st_size for p in TOY_MODEL_DIR.rglob("*") if p.is_file())
    assert size < 8_000_000  # a few MB: 1.2M float32 transformer parameters
    by_name, by_path = load_pipeline("toy"), load_pipeline(str(TOY_MODEL_DIR))
    assert type(by_name).__name__ == "WanPipeline"
    a, b = by_name.transformer.state_dict(), by_path.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Every caption word is one token: the tokenizer was built for the toy vocabulary.
    caption = toy_world.caption(toy_world.random_attributes(1, torch.Generator().manual_seed(0))[0])
    assert len(by_name.tokenizer(caption).input_ids) == len(caption.split()) + 1  # + </s>


def test_samples_follow_captions_far_above_chance():
    """ODE samples of fresh captions through the engine, read from pixels by the exact rewards.

    Under chance the colour is right 1/6 of the time: 24 or more right of 48 has probability
    below 1e-6, so the threshold cannot be met by a model that ignores its caption.
    """
    report = caption_following("toy", n=48, seed=777)
    assert report["rates"]["colour"] >= 0.5, report
    above = [a for a in toy_world.ATTRIBUTES if report["rates"][a] >= report["chance"][a] + 0.3]
    assert len(above) >= 2, report  # colour and background (see the README for all rates)


def test_shipped_report_lists_every_attribute_against_chance():
    report = json.loads((TOY_MODEL_DIR / "report.json").read_text())
    assert set(report["rates"]) == set(toy_world.ATTRIBUTES)
    assert report["rates"]["colour"] > report["chance"]["colour"]
    assert set(report["motion"]) == {"slow", "fast"}


def test_training_script_writes_a_loadable_folder(tmp_path, capsys):
    """A few steps of the real script: data, tokenizer, flow matching, save, report."""
    out = tmp_path / "toy"
    toy_model.main(["--out", str(out), "--clips", "32", "--steps", "3", "--batch-size", "8",
                    "--motion-steps", "2", "--motion-batch-size", "4",
                    "--vae-steps", "2", "--report-samples", "4", "--threads", "1"])
    report = json.loads((out / "report.json").read_text())
    assert report["first_phase"]["train_steps"] == 3 and report["motion_steps"] == 2 and report["samples"] == 4
    assert 0 <= report["first_phase"]["train_seconds"] <= report["train_seconds"]  # both phases' times
    pipe = load_pipeline(str(out))
    trained = pipe.transformer.state_dict()
    fresh = toy_model.build_untrained(0, TOY_MODEL_DIR / "vae").transformer.state_dict()
    assert pipe.vae.config.scale_factor_spatial == 4 and report["first_phase"]["vae_steps"] == 2
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh)  # the EMA moved

    # --from: the motion phase alone, from that folder; the first phase is recorded as it was
    again_out = tmp_path / "toy2"
    toy_model.main(["--from", str(out), "--out", str(again_out), "--clips", "32", "--motion-steps", "2",
                    "--motion-batch-size", "4", "--report-samples", "4", "--threads", "1"])
    second = json.loads((again_out / "report.json").read_text())
    assert second["first_phase"]["from"] == str(out) and second["first_phase"]["train_steps"] == 3
    moved = load_pipeline(str(again_out)).transformer.state_dict()
    assert any(not torch.equal(moved[k], trained[k]) for k in trained)

    # --report-only measures the folder again and keeps how it was trained
    toy_model.main(["--out", str(out), "--report-only", "--report-samples", "6", "--threads", "1"])
    again = json.loads((out / "report.json").read_text())
    assert again["first_phase"] == report["first_phase"] and again["samples"] == 6
    assert set(again["rates"]) == set(report["rates"]) and set(again["motion"]) <= {"slow", "fast"}
    for flags in (["--out", str(tmp_path / "nothing"), "--report-only"], ["--from", str(tmp_path / "nothing")]):
        with pytest.raises(SystemExit):
            toy_model.main(flags)
        assert "not a toy model folder" in capsys.readouterr().err


def test_training_with_a_loaded_vae_is_deterministic(tmp_path):
    """Two runs with ``--vae`` in one process train the same weights: each phase seeds the global
    generator the text encoder's dropout draws from (torch seeds it at random at start-up, and the
    first run leaves it elsewhere)."""
    flags = ["--vae", str(TOY_MODEL_DIR / "vae"), "--clips", "16", "--steps", "2", "--batch-size", "4",
             "--motion-steps", "2", "--motion-batch-size", "4", "--report-samples", "2", "--threads", "1"]
    weights = []
    for name in ("a", "b"):
        toy_model.main(["--out", str(tmp_path / name), *flags])
        pipe = load_pipeline(str(tmp_path / name))
        weights.append({**pipe.transformer.state_dict(), **pipe.text_encoder.state_dict()})
    fresh = toy_model.build_untrained(0, TOY_MODEL_DIR / "vae").transformer.state_dict()
    assert any(not torch.equal(weights[0][k], fresh[k]) for k in fresh)  # it trained
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_training_encodes_prompts_like_the_engine():
    """The script trains on the pipeline's own prompt encoding, which the recipe also uses."""
    pipe = toy_model.build_untrained(0, TOY_MODEL_DIR / "vae")
    pipe.text_encoder.eval()  # no dropout: compare the encodings themselves
    prompts = ["a small red bar on the left moves upward slowly on a black background", ""]
    with torch.no_grad():
        ours = pipe._get_t5_prompt_embeds(prompts, max_sequence_length=toy_model.MAX_SEQUENCE_LENGTH,
                                          device=torch.device("cpu"))
        engine, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                       max_sequence_length=toy_model.MAX_SEQUENCE_LENGTH, device=torch.device("cpu"))
    assert torch.equal(ours, engine)
    assert ours[0, 15:].abs().sum() == 0 and ours[0, :15].abs().sum() > 0  # 14 words + </s>, zero-padded


def test_foreground_mask_marks_the_object_cells():
    """The loss weighting's mask: the object's latent cells, none of a plain background, more for
    a large object than a small one, and it follows the object across latent frames."""
    from trainer.toy.vae import encoder_means

    vae = load_pipeline("toy").vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    base = {"colour": "red", "shape": "square", "position": "center", "direction": "right", "speed": "fast",
            "background": "gray"}
    attrs = [{**base, "size": "small"}, {**base, "size": "large"}]
    videos = toy_world.render(attrs, g=torch.Generator().manual_seed(0))
    plain = torch.full_like(videos[:1], 0.0)  # a gray frame, no object
    z = (encoder_means(vae, torch.cat([videos, plain])) - mean) / std
    mask = toy_model.foreground_mask(z)  # [3, 1, 3, 16, 16]
    small, large, empty = mask.sum(dim=(1, 3, 4))  # cells per latent frame
    assert empty.sum() == 0
    assert (small > 0).all() and (large > 2 * small).all()
    xs = torch.arange(16.0)
    centre_x = (mask[1, 0] * xs).sum(dim=(1, 2)) / mask[1, 0].sum(dim=(1, 2))
    assert centre_x[0] < centre_x[1] < centre_x[2]  # moving right


def test_motion_mask_marks_the_path_in_every_frame():
    """The motion phase's weight: the cells a moving object covers in some latent frame but not in
    all, marked in every frame (also where the object is not yet or no longer); none for a still
    object or a plain background."""
    from trainer.toy.vae import encoder_means

    vae = load_pipeline("toy").vae
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    base = {"colour": "red", "shape": "square", "size": "large", "position": "center", "speed": "fast",
            "background": "gray"}
    videos = toy_world.render([{**base, "direction": "right"}], g=torch.Generator().manual_seed(0))
    still = videos[:, :, :1].expand_as(videos).clone()  # the first frame held: no motion
    z = (encoder_means(vae, torch.cat([videos, still, torch.zeros_like(videos)])) - mean) / std
    path, fg = toy_model.motion_mask(z), toy_model.foreground_mask(z)
    assert path.shape == fg.shape
    assert path[0, 0, 0].sum() > 0 and (path[0, 0] == path[0, 0, :1]).all()  # the same cells in every frame
    assert (path[0] * (1 - fg[0])).sum() > 0  # including cells empty in that frame
    assert path[1].sum() == 0 and path[2].sum() == 0
