"""Caption evaluation with the standard COCO caption metrics (pycocoevalcap).

BLEU-1..4, METEOR, ROUGE-L and CIDEr, after PTB tokenization, exactly as the COCO caption
evaluation server computes them; per-image CIDEr too, to find the worst captions. pycocoevalcap
is an optional extra (``pip install bliptk[eval]``) and runs Java for tokenization and METEOR.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import BliptkError

__all__ = ["EvaluationError", "EvaluationResult", "evaluate", "load_predictions", "load_references"]


class EvaluationError(BliptkError, ValueError):
    """Predictions or references cannot be evaluated (malformed, mismatched, or the tools are missing)."""


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of a set of captions.

    Attributes:
        metrics: ``Bleu_1`` .. ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr`` (as the COCO
            evaluation names them), each in [0, 1] except CIDEr (up to 10).
        per_image: ``(image_id, caption, CIDEr)`` for every image, worst CIDEr first.
    """

    metrics: dict[str, float]
    per_image: list[tuple[object, str, float]]

    def __str__(self) -> str:
        lines = [f"{name:8} {value * 100:6.1f}" for name, value in self.metrics.items()]
        return "\n".join(lines)


def _image_id(text) -> object:
    """An image id from an id or a COCO file name (``COCO_val2014_000000000042.jpg`` -> 42)."""
    if isinstance(text, int):
        return text
    text = str(text)
    if text.isdigit():
        return int(text)
    digits = re.findall(r"\d+", Path(text).stem)
    return int(digits[-1]) if digits else Path(text).stem


def _read_json(source, what: str):
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise EvaluationError(f"{what} {path}: no such file")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".jsonl", ".csv"):
            from .batch import read_records

            return read_records(path)
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise EvaluationError(f"{what} {path}: not valid JSON ({error})") from None
    return source


def load_predictions(source) -> dict[object, str]:
    """``{image_id: caption}`` from a COCO results list (``[{"image_id", "caption"}]``), bliptk batch
    records (a ``.jsonl``/``.csv`` file or their dicts; image ids from the file names), or a map."""
    data = _read_json(source, "predictions")
    if isinstance(data, dict):
        return {_image_id(key): str(value) for key, value in data.items()}
    if not isinstance(data, list):
        raise EvaluationError(f"predictions must be a list of {{image_id, caption}} or bliptk records, got {type(data).__name__}")
    predictions = {}
    for index, item in enumerate(data):
        if not isinstance(item, dict) or "caption" not in item or not ("image_id" in item or "path" in item):
            raise EvaluationError(f"prediction {index} is not {{image_id, caption}} nor a bliptk record: {str(item)[:80]}")
        if item.get("error"):
            continue  # a failed input has no caption to score
        key = _image_id(item["image_id"] if "image_id" in item else item["path"])
        predictions[key] = str(item["caption"])
    return predictions


def load_references(source) -> dict[object, list[str]]:
    """``{image_id: [captions]}`` from the COCO captions annotation format (``images`` and
    ``annotations``), a list of ``{"image_id", "captions"}``, or such a map."""
    data = _read_json(source, "references")
    references: dict[object, list[str]] = {}
    if isinstance(data, dict) and "annotations" in data:
        for annotation in data["annotations"]:
            try:
                references.setdefault(_image_id(annotation["image_id"]), []).append(str(annotation["caption"]))
            except (KeyError, TypeError):
                raise EvaluationError(f"annotation without image_id and caption: {str(annotation)[:80]}") from None
    elif isinstance(data, dict):
        for key, captions in data.items():
            if not isinstance(captions, list):
                raise EvaluationError(f"references of {key!r} must be a list of captions")
            references[_image_id(key)] = [str(c) for c in captions]
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict) or "captions" not in item or "image_id" not in item:
                raise EvaluationError(f"reference entry is not {{image_id, captions}}: {str(item)[:80]}")
            references[_image_id(item["image_id"])] = [str(c) for c in item["captions"]]
    else:
        raise EvaluationError(f"references must be COCO annotations or a map of captions, got {type(data).__name__}")
    if not references:
        raise EvaluationError("the references hold no captions")
    return references


def _scorers():
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        raise EvaluationError("caption metrics need pycocoevalcap: pip install 'bliptk[eval]'") from None
    if shutil.which("java") is None:
        raise EvaluationError("caption metrics need Java (PTB tokenization and METEOR run on it): install a JRE, e.g. apt-get install default-jre")
    return PTBTokenizer, [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Meteor(), ["METEOR"]), (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]


def evaluate(predictions, references) -> EvaluationResult:
    """Score captions against reference captions with the COCO caption metrics.

    Args:
        predictions: See :func:`load_predictions` (a path, or the loaded data).
        references: See :func:`load_references` (a path, or the loaded data).

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        EvaluationError: Malformed input, ids that do not match (the message says how many are
            missing on each side), or pycocoevalcap or Java missing.
    """
    predicted = load_predictions(predictions)
    referenced = load_references(references)
    without_references = sorted(set(predicted) - set(referenced), key=str)
    without_prediction = sorted(set(referenced) - set(predicted), key=str)
    if without_references or without_prediction:
        raise EvaluationError(
            f"image ids do not match: {len(without_references)} predictions have no references "
            f"(e.g. {without_references[:3]}), {len(without_prediction)} references have no prediction "
            f"(e.g. {without_prediction[:3]})"
        )
    tokenizer_class, scorers = _scorers()
    tokenizer = tokenizer_class()
    ids = sorted(predicted, key=str)
    metrics: dict[str, float] = {}
    per_image_cider: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap prints its progress
        results = tokenizer.tokenize({i: [{"caption": predicted[i]}] for i in ids})
        truths = tokenizer.tokenize({i: [{"caption": c} for c in referenced[i]] for i in ids})
        scored = [(scorer.compute_score(truths, results), names) for scorer, names in scorers]
    for (score, scores), names in scored:
        if len(names) == 1:
            metrics[names[0]] = float(score)
        else:
            metrics.update((name, float(value)) for name, value in zip(names, score))
        if names == ["CIDEr"]:
            per_image_cider = dict(zip(sorted(truths.keys()), (float(v) for v in scores)))
    per_image = sorted(((i, predicted[i], per_image_cider[i]) for i in ids), key=lambda row: row[2])
    return EvaluationResult(metrics, per_image)
