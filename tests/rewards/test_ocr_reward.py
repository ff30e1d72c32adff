"""Tests of the offline OCR reward: quoted-text parsing, exact edit distances, frame selection,
and the real PP-OCRv4 engine (rapidocr-onnxruntime) reading text rendered by Pillow."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from trainer.errors import UserError
from trainer.rewards import build_reward
from trainer.rewards.ocr import levenshtein, normalise_text, quoted_text, text_similarity

# ---------------------------------------------------------------- text helpers (exact)

@pytest.mark.parametrize("prompt, expected", [
    ('a sign that says "OPEN"', "OPEN"),
    ("a sign that says 'OPEN'", "OPEN"),
    ("a sign that says \u201cOPEN\u201d", "OPEN"),
    ("a sign that says \u2018OPEN\u2019", "OPEN"),
    ("the dog's collar reads 'REX' clearly", "REX"),
    ("it's a cat's toy", ""),
    ('two signs: "HOT" and "COLD"', "HOT COLD"),
    ('a "  spaced out  " banner', "spaced out"),
    ('an empty "" sign', ""),
    ("no quotes at all", ""),
])
def test_quoted_text(prompt, expected):
    assert quoted_text(prompt) == expected


@pytest.mark.parametrize("a, b, distance", [
    ("kitten", "sitting", 3),
    ("flaw", "lawn", 2),
    ("", "abc", 3),
    ("abc", "", 3),
    ("open", "open", 0),
    ("open", "opfn", 1),
    ("open", "nepo", 4),
    ("intention", "execution", 5),
])
def test_levenshtein_exact(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_text_similarity_exact():
    assert normalise_text(" Open\t24  H\n") == "open24h"
    assert text_similarity("OPEN", "open") == 1.0
    assert text_similarity("Hello World", "helloworld") == 1.0
    assert text_similarity("OPEN", "OPFN") == 0.75
    assert text_similarity("OPEN", "") == 0.0
    assert text_similarity("", "") == 1.0
    assert text_similarity("OPEN", "OPEN NOW") == pytest.approx(1 - 3 / 7)  # extra text costs
    assert text_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)


# ---------------------------------------------------------------- reward logic, fake OCR

class FakeReader:
    """Stands in for PP-OCRv4: returns 'OPEN' for a frame whose mean is above 128, else ''."""

    def __init__(self):
        self.frames_read = 0

    def __call__(self, frame):
        self.frames_read += 1
        return "OPEN" if frame.mean() > 128 else ""


def test_every_nth_frame_is_scored_and_averaged():
    reward = build_reward("ocr")  # every=4 by default
    reader = FakeReader()
    reward.read_text = reader
    video = torch.zeros(1, 9, 8, 8, 3, dtype=torch.uint8)
    video[0, 0] = 255  # frame 0: "OPEN"; frames 4 and 8 blank; frames 1-3, 5-7 are never read
    video[0, 1:4] = 255
    out = reward(video, ['a sign that says "open"'])
    assert reader.frames_read == 3
    assert out.scores.tolist() == pytest.approx([1 / 3])
    assert out.details["has_text"].tolist() == [1.0] and out.details["best_frame"].tolist() == [1.0]

    reward2 = build_reward("ocr", every=1)
    reward2.read_text = FakeReader()
    assert reward2(video, ['"OPEN"']).scores.tolist() == pytest.approx([4 / 9])


def test_prompt_without_quotes_scores_zero_without_ocr():
    reward = build_reward("ocr")
    reader = FakeReader()
    reward.read_text = reader
    video = torch.full((2, 5, 8, 8, 3), 255, dtype=torch.uint8)
    out = reward(video, ["a sign with no quoted text", 'a sign saying "OPEN"'])
    assert out.scores.tolist() == [0.0, 1.0]
    assert out.details["has_text"].tolist() == [0.0, 1.0]
    assert reader.frames_read == 2  # only the second video's frames 0 and 4
    assert reward._engine is None


def test_bad_arguments_and_missing_package(monkeypatch):
    with pytest.raises(UserError, match="every"):
        build_reward("ocr", every=0)
    with pytest.raises(UserError, match="min_confidence"):
        build_reward("ocr", min_confidence=2)
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rapidocr_onnxruntime" else real_find_spec(name, *a))
    with pytest.raises(UserError, match="pip install rapidocr-onnxruntime"):
        build_reward("ocr")


# ---------------------------------------------------------------- the real engine

def _font(size):
    try:
        import matplotlib.font_manager as font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), size)
    except Exception:  # no matplotlib / font: Pillow's bundled scalable font
        return ImageFont.load_default(size=size)


def text_frame(text, h=96, w=192, size=40):
    image = Image.new("RGB", (w, h), (250, 250, 240))
    ImageDraw.Draw(image).text((12, (h - size) // 2 - 4), text, fill=(10, 10, 10), font=_font(size))
    return torch.from_numpy(np.array(image))


def test_real_ocr_reads_rendered_text_and_beats_blank():
    pytest.importorskip("rapidocr_onnxruntime")
    reward = build_reward("ocr", det_limit_side_len=192)
    text = text_frame("OPEN")
    blank = torch.full_like(text, 245)
    videos = torch.stack([text.expand(5, *text.shape), blank.expand(5, *blank.shape)])  # frames 0, 4 read
    prompt = 'a shop sign that says "Open"'
    out = reward(videos, [prompt, prompt])
    assert reward.read_text(text.numpy()).strip().upper() == "OPEN"
    assert out.scores[0].item() == 1.0  # case-insensitive exact match in both scored frames
    assert out.scores[1].item() == 0.0
    engine = reward._engine
    assert engine is not None
    wrong = reward(videos[:1], ['a sign that says "OPEX"'])
    assert reward._engine is engine  # loaded once per reward instance
    assert wrong.scores.item() == pytest.approx(0.75)  # one substitution in four characters
