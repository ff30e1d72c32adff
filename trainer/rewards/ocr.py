"""Offline OCR reward ``ocr``: does the video show the text quoted in its prompt?

Text rendering is the task of Flow-GRPO's OCR reward; this one runs fully offline with
``rapidocr-onnxruntime``, which ships the PP-OCRv4 detection and recognition ONNX models inside
the wheel (``pip install rapidocr-onnxruntime``; no download at run time).

Definition, per video with prompt ``p``:

1. ``target`` = the text quoted in ``p`` (:func:`quoted_text`): every ``"..."``, ``“...”``,
   ``'...'`` or ``‘...’`` span, in order, joined with spaces. ``a sign that says "OPEN"`` ->
   ``OPEN``. A prompt without quoted text scores 0 and gets ``details["has_text"] = 0``.
2. Frames ``0, every, 2*every, ...`` (default ``every=4``, as Flow-GRPO's video OCR reward) are
   read by PP-OCRv4 (detection + recognition; no angle classifier); the frame's recognised text is
   every detected line in reading order (top to bottom, left to right), joined with spaces.
3. Both strings are normalised by :func:`normalise_text` (Unicode NFKC, case-folded, all whitespace
   removed) and compared with :func:`text_similarity`:
   ``1 - levenshtein(target, recognised) / max(len(target), len(recognised))`` in 0..1
   (1 = identical; 0 when nothing is recognised or no character matches).
4. ``score`` = the mean similarity over the scored frames.

Unlike Flow-GRPO (which divides by the target length only and counts a target contained in longer
recognised text as a perfect match), extra recognised characters lower the score here, so a frame
covered in unrelated text is not rewarded.

``details``: ``has_text`` (1 if the prompt quotes text, else 0) and ``best_frame`` (the highest
per-frame similarity). The OCR engine is created on the first :meth:`OCRReward.score` call and kept
by the reward instance (about 1 s); construction only checks that the package is installed.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .base import Reward, RewardOutput, register_reward

__all__ = [
    "quoted_text",
    "normalise_text",
    "levenshtein",
    "text_similarity",
    "OCRReward",
]

_QUOTED = re.compile(
    r'"([^"]*)"'               # "double"
    r"|\u201c([^\u201d]*)\u201d"  # “curly double”
    r"|\u2018([^\u2019]*)\u2019"  # ‘curly single’
    r"|(?<!\w)'([^']*)'(?!\w)"    # 'single' -- not an apostrophe: no letter/digit outside the quotes
)
"""Quoted spans. A straight single quote opens only after a non-word character (so ``dog's`` is
not an opening quote) and closes only before one."""

_INSTALL_HINT = "Install it with: pip install rapidocr-onnxruntime (it ships the PP-OCRv4 models)."


def quoted_text(prompt: str) -> str:
    """The text quoted in ``prompt``: every non-blank quoted span in order, joined with spaces.

    Supports ``"..."``, ``“...”``, ``'...'`` and ``‘...’``; an apostrophe inside a word
    (``dog's``) does not open a quote. Returns ``""`` when nothing is quoted.

    >>> quoted_text('a neon sign that says "OPEN 24h" above a door')
    'OPEN 24h'
    >>> quoted_text("the dog's collar reads 'REX'")
    'REX'
    """
    spans = []
    for match in _QUOTED.finditer(prompt):
        span = next(group for group in match.groups() if group is not None)
        if span.strip():
            spans.append(span.strip())
    return " ".join(spans)


def normalise_text(text: str) -> str:
    """``text`` in Unicode NFKC form, case-folded, with all whitespace removed.

    >>> normalise_text("Open  24 H")
    'open24h'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(text.split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest single-character insertions, deletions and substitutions turning
    ``a`` into ``b`` (dynamic programming, two rows, ``O(len(a) * len(b))``).

    >>> levenshtein("kitten", "sitting")
    3
    """
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            cost = 0 if char_a == char_b else 1
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost))
        previous = current
    return previous[-1]


def text_similarity(target: str, recognised: str) -> float:
    """``1 - levenshtein / max(len)`` of the two strings after :func:`normalise_text`, in 0..1.

    Two empty strings are identical (1.0); an empty recognition of a non-empty target scores 0.

    >>> text_similarity("OPEN", "open")
    1.0
    >>> text_similarity("OPEN", "OPFN")
    0.75
    """
    a, b = normalise_text(target), normalise_text(recognised)
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    return 1.0 - levenshtein(a, b) / longest


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be a positive integer, got {value!r}.")
    return value


@register_reward("ocr")
class OCRReward(Reward):
    """Similarity between the prompt's quoted text and the text PP-OCRv4 reads in the video.

    See :mod:`trainer.rewards.ocr` for the exact definition. Arguments:

    * ``every`` (default 4): OCR frames ``0, every, 2*every, ...`` of each video.
    * ``det_limit_side_len`` (default ``None`` = rapidocr's 736): the detector resizes each frame
      so that its shorter side is this many pixels. Smaller is faster (and fine for large text);
      the default reads small text in 480p frames best.
    * ``min_confidence`` (default 0.5): recognised lines below this confidence are ignored.
    * ``threads`` (default ``None`` = onnxruntime's choice): intra-op threads of each ONNX session.
    """

    input_format = "uint8"

    def __init__(self, every: int = 4, det_limit_side_len: int | None = None,
                 min_confidence: float = 0.5, threads: int | None = None):
        self.every = _positive_int(every, "ocr 'every'")
        if det_limit_side_len is not None:
            _positive_int(det_limit_side_len, "ocr 'det_limit_side_len'")
        if threads is not None:
            _positive_int(threads, "ocr 'threads'")
        if (isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float))
                or not 0.0 <= min_confidence <= 1.0):
            raise UserError(f"ocr 'min_confidence' must be a number in 0..1, got {min_confidence!r}.")
        if importlib.util.find_spec("rapidocr_onnxruntime") is None:
            raise UserError(f"The 'ocr' reward needs the rapidocr-onnxruntime package. {_INSTALL_HINT}")
        self.det_limit_side_len = det_limit_side_len
        self.min_confidence = float(min_confidence)
        self.threads = threads
        self._engine = None

    def _get_engine(self):
        """The RapidOCR engine, created on first use and kept (loading the ONNX models takes ~1 s)."""
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:
                raise UserError(f"Could not import rapidocr_onnxruntime ({exc}). {_INSTALL_HINT}") from exc
            options: dict[str, Any] = {"text_score": self.min_confidence}
            if self.det_limit_side_len is not None:
                options["det_limit_side_len"] = self.det_limit_side_len
            if self.threads is not None:
                options["intra_op_num_threads"] = self.threads
                options["inter_op_num_threads"] = 1
            self._engine = RapidOCR(**options)
        return self._engine

    def read_text(self, frame: np.ndarray) -> str:
        """The text recognised in one uint8 RGB frame ``[H, W, 3]``: detected lines in reading
        order joined with spaces (``""`` when nothing is found)."""
        engine = self._get_engine()
        bgr = np.ascontiguousarray(frame[..., ::-1])  # rapidocr treats arrays as OpenCV BGR
        result, _ = engine(bgr, use_cls=False)
        if not result:
            return ""
        return " ".join(str(line[1]) for line in result)

    def score(self, videos: torch.Tensor, prompts: list[str]) -> RewardOutput:
        frames = videos[:, ::self.every].cpu().numpy()  # [B, F, H, W, 3] uint8
        n = frames.shape[0]
        scores = torch.zeros(n, dtype=torch.float64)
        has_text = torch.zeros(n, dtype=torch.float64)
        best = torch.zeros(n, dtype=torch.float64)
        for i in range(n):
            target = quoted_text(prompts[i])
            if not normalise_text(target):
                continue  # nothing to render: score 0, has_text 0
            has_text[i] = 1.0
            sims = [text_similarity(target, self.read_text(frame)) for frame in frames[i]]
            scores[i] = sum(sims) / len(sims)
            best[i] = max(sims)
        return RewardOutput(scores.float(), {"has_text": has_text.float(), "best_frame": best.float()})

    def __repr__(self) -> str:
        return f"OCRReward(every={self.every}, det_limit_side_len={self.det_limit_side_len})"
