"""Caption evaluation with the standard COCO caption metrics (pycocoevalcap).

BLEU-1..4, METEOR, ROUGE-L and CIDEr, after PTB tokenization, exactly as the COCO caption
evaluation server computes them; per-image CIDEr too, to find the worst captions. pycocoevalcap
is an optional extra (the ``eval`` extra: ``pip install -e '.[eval]'``) and runs Java for tokenization and METEOR.
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
from typing import Any

from ..core.errors import EvaluationError, InputError, MissingDependencyError
from ..core.optional import optional
from ..core.quiet import stderr_of_children_kept
from ..store.coco import coco_captions, coco_file_problem, is_coco_captions

__all__ = ["EvaluationResult", "ReferenceScore", "evaluate", "load_predictions", "load_references", "score_references"]


@dataclass(frozen=True)
class EvaluationResult:
    """Scores of a set of captions.

    Attributes:
        metrics: ``Bleu_1`` .. ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr`` (as the COCO
            evaluation names them), each in [0, 1] except CIDEr (up to 10).
        per_image: ``(image_id, caption, CIDEr)`` for every image, worst CIDEr first.
        chair: Object hallucination ([`ChairResult`][bliptk.analysis.chair.ChairResult]), when
            ground truth objects were given; its ``chair_s`` and ``chair_i`` are also in ``metrics``
            as ``CHAIRs`` and ``CHAIRi``.
    """

    metrics: dict[str, float]
    per_image: list[tuple[int | str, str, float]]
    chair: Any = None

    def __str__(self) -> str:
        lines = [f"{name:8} {value * 100:6.1f}" for name, value in self.metrics.items()]
        return "\n".join(lines)


def _image_id(value) -> int | str:
    """An id as given: an integer (a string of digits counts as one), else the string."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise EvaluationError(f"an image id must be a number or a name, got {value!r}")
    return int(value) if isinstance(value, str) and value.isdigit() else value


def _id_from_path(path: str, numeric: bool) -> int | str:
    """The id of a captioned file: its name's stem (``cat.jpg`` -> ``"cat"``), or with ``numeric``
    the stem's last number (``COCO_val2014_000000000042.jpg`` -> 42), as COCO names its files."""
    stem = Path(path).stem
    if not numeric:
        return _image_id(stem)
    digits = re.findall(r"\d+", stem)
    if not digits:
        raise EvaluationError(f"{path}: the references use numeric image ids, and this file's name holds no number")
    return int(digits[-1])


def _one_kind_of_id(ids, what: str) -> None:
    kinds = {type(i) for i in ids}
    if len(kinds) > 1:
        number = next(i for i in ids if isinstance(i, int))
        name = next(i for i in ids if isinstance(i, str))
        raise EvaluationError(f"the {what} mix numeric image ids and names (e.g. {number!r} and {name!r}); use one kind")


def _read_json(source, what: str):
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = Path(source)
    if path.is_dir():
        raise EvaluationError(f"{what} {path}: is a folder; give a JSON file or bliptk records")
    if not path.is_file():
        raise EvaluationError(f"{what} {path}: no such file")
    if path.suffix.lower() in (".jsonl", ".csv"):
        from ..store.records import read_records

        try:
            return read_records(path)
        except InputError as error:
            raise EvaluationError(f"{what} {error}") from None
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise EvaluationError(f"{what} {path}: not a text file (not UTF-8); give a JSON file or bliptk records") from None
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{what} {path}: not valid JSON ({error})") from None


def load_predictions(source, numeric_ids: bool = False) -> dict[int | str, str]:
    """``{image_id: caption}`` from a COCO results list (``[{"image_id", "caption"}]``), bliptk batch
    records (a ``.jsonl``/``.csv`` file or their dicts), or a ``{image_id: caption}`` map.

    A record's id is its COCO ``image_id`` when it has one, else its file's name: the whole stem,
    or with ``numeric_ids`` (references with numeric ids, as COCO's) the stem's last number. Failed
    inputs' records are left out.

    Raises:
        EvaluationError: Malformed input; a prediction without a caption; two predictions of one
            image id (naming both); numeric ids mixed with names.
    """
    data = _read_json(source, "predictions")
    if isinstance(data, dict):
        items = [{"image_id": key, "caption": value} for key, value in data.items()]
    elif isinstance(data, list):
        items = data
    else:
        raise EvaluationError(f"predictions must be a list of {{image_id, caption}} or bliptk records, got {type(data).__name__}")
    predictions: dict[int | str, str] = {}
    origin: dict[int | str, str] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "caption" not in item or not ("image_id" in item or "path" in item):
            raise EvaluationError(f"prediction {index} is not {{image_id, caption}} nor a bliptk record: {str(item)[:80]}")
        if item.get("error"):
            continue  # a failed input has no caption to score
        where = str(item["path"]) if "path" in item else f"prediction {index}"
        if not isinstance(item["caption"], str):
            raise EvaluationError(f"{where} has no caption ({json.dumps(item['caption'])}); a caption is a string")
        key = _image_id(item["image_id"]) if "image_id" in item else _id_from_path(str(item["path"]), numeric_ids)
        if key in predictions:
            raise EvaluationError(f"{origin[key]} and {where} both have image id {key!r}; give each image one prediction")
        predictions[key], origin[key] = item["caption"], where
    _one_kind_of_id(predictions, "predictions")
    return predictions


def load_references(source) -> dict[int | str, list[str]]:
    """``{image_id: [captions]}`` from the COCO captions annotation format (``images`` and
    ``annotations``), a list of ``{"image_id", "captions"}``, or such a map."""
    data = _read_json(source, "references")
    references: dict[int | str, list[str]] = {}
    if is_coco_captions(data):
        problem = coco_file_problem(data)
        if problem:
            raise EvaluationError(f"references: {problem}")
        for annotation in coco_captions(data):
            if not annotation.is_object or annotation.image_id is None or not isinstance(annotation.caption, str):
                raise EvaluationError(f"annotation without image_id and caption: {str(annotation.raw)[:80]}")
            references.setdefault(_image_id(annotation.image_id), []).append(annotation.caption)
    elif isinstance(data, dict):
        for key, captions in data.items():
            references[_image_id(key)] = _captions(captions, key)
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict) or "captions" not in item or "image_id" not in item:
                raise EvaluationError(f"reference entry is not {{image_id, captions}}: {str(item)[:80]}")
            references[_image_id(item["image_id"])] = _captions(item["captions"], item["image_id"])
    else:
        raise EvaluationError(f"references must be COCO annotations or a map of captions, got {type(data).__name__}")
    if not references:
        raise EvaluationError("the references hold no captions")
    _one_kind_of_id(references, "references")
    return references


def _captions(captions, key) -> list[str]:
    if not isinstance(captions, list) or not all(isinstance(caption, str) for caption in captions):
        raise EvaluationError(f"references of {key!r} must be a list of captions (strings), got {str(captions)[:80]}")
    return list(captions)


def numeric_ids(references: dict) -> bool:
    """Whether references use numeric image ids (as COCO's), so files are matched by the number in
    their names."""
    return all(isinstance(key, int) for key in references)


def _scorers():
    optional("pycocoevalcap")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if shutil.which("java") is None:
        raise MissingDependencyError(
            "caption metrics need Java (PTB tokenization and METEOR run on it): install a JRE, e.g. apt-get install default-jre"
        )
    return PTBTokenizer, [
        (Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]),
        (Meteor(), ["METEOR"]),
        (Rouge(), ["ROUGE_L"]),
        (Cider(), ["CIDEr"]),
    ]


def evaluate(predictions, references, *, instances=None, chair: bool | None = None) -> EvaluationResult:
    """Score captions against reference captions with the COCO caption metrics, and object
    hallucination (CHAIR) when ground truth objects are given.

    Args:
        predictions: See [`load_predictions()`][bliptk.analysis.evaluation.load_predictions] (a path, or the loaded data).
        references: See [`load_references()`][bliptk.analysis.evaluation.load_references] (a path, or the loaded data).
        instances: COCO instance annotations (``instances_val2014.json``, or its parsed JSON):
            CHAIR against each image's annotated objects and the objects its references mention,
            as the paper takes them.
        chair: True: CHAIR, against the references' objects alone where no ``instances`` are
            given; False: none; None (default): CHAIR where ``instances`` are given.

    Returns:
        An [`EvaluationResult`][bliptk.analysis.evaluation.EvaluationResult].

    Raises:
        EvaluationError: Malformed input, ids that do not match (the message says how many are
            missing on each side), two predictions of one image.
        MissingDependencyError: pycocoevalcap or Java is missing.
    """
    referenced = load_references(references)
    predicted = load_predictions(predictions, numeric_ids(referenced))
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
    # pycocoevalcap prints its progress, and its Java tokenizer its speed on standard error
    with contextlib.redirect_stdout(io.StringIO()), stderr_of_children_kept():
        results = tokenizer.tokenize({i: [{"caption": predicted[i]}] for i in ids})
        truths = tokenizer.tokenize({i: [{"caption": c} for c in referenced[i]] for i in ids})
        scored = [(scorer.compute_score(truths, results), names) for scorer, names in scorers]
    for (score, scores), names in scored:
        if len(names) == 1:
            metrics[names[0]] = float(score)
        else:
            metrics.update((name, float(value)) for name, value in zip(names, score, strict=True))
        if names == ["CIDEr"]:
            per_image_cider = dict(zip(sorted(truths.keys()), (float(v) for v in scores), strict=True))
    per_image = sorted(((i, predicted[i], per_image_cider[i]) for i in ids), key=lambda row: row[2])
    hallucination = _chair(predicted, referenced, instances) if (chair or (chair is None and instances is not None)) else None
    if hallucination is not None:
        metrics.update(CHAIRs=hallucination.chair_s, CHAIRi=hallucination.chair_i)
    return EvaluationResult(metrics, per_image, hallucination)


def _chair(predicted: dict, referenced: dict, instances):
    """CHAIR of the predictions against the objects of the instances (if any) and the references."""
    from .chair import chair, coco_instance_objects, reference_objects

    truth = reference_objects(referenced)
    if instances is not None:
        annotated = coco_instance_objects(instances)
        unannotated = [i for i in predicted if i not in annotated]
        if unannotated:
            raise EvaluationError(f"{len(unannotated)} predicted images are not in the instances (e.g. {unannotated[:3]})")
        truth = {i: truth.get(i, set()) | annotated[i] for i in predicted}
    return chair({i: predicted[i] for i in sorted(predicted, key=str)}, truth)


@dataclass(frozen=True)
class ReferenceScore:
    """How likely the model finds one reference caption of an image
    ([`score_references()`][bliptk.analysis.evaluation.score_references]).

    Attributes:
        image_id: The image's id in the references.
        path: The image file (from the records).
        caption: The reference caption.
        score: Its [`CaptionScore`][bliptk.core.scoring.CaptionScore].
    """

    image_id: int | str
    path: str
    caption: str
    score: Any


def score_references(captioner, records, references, *, batch_size: int = 16) -> list[ReferenceScore]:
    """Score every reference caption of every captioned image under the model, least likely first
    (by mean log-probability per token): captions to check by hand, or images the model reads
    differently from the people who described them.

    Args:
        captioner: Any captioner.
        records: bliptk records of the images (a ``.jsonl``/``.csv`` file or their dicts): their
            ``path`` says where each image is; an image's id is matched as
            [`evaluate()`][bliptk.analysis.evaluation.evaluate] matches it.
        references: See [`load_references()`][bliptk.analysis.evaluation.load_references].
        batch_size: Captions scored together.

    Raises:
        EvaluationError: Malformed inputs, or no record matches a referenced image.
    """
    referenced = load_references(references)
    rows = _read_json(records, "records")
    if not isinstance(rows, list) or not all(isinstance(row, dict) and "path" in row for row in rows):
        raise EvaluationError("records must be bliptk records (a .jsonl or .csv file, or their dicts), each with a path")
    numeric = numeric_ids(referenced)
    paths = {_id_from_path(str(row["path"]), numeric): str(row["path"]) for row in rows if not row.get("error")}
    matched = [image_id for image_id in referenced if image_id in paths]
    if not matched:
        raise EvaluationError(f"no record's file matches a referenced image id (e.g. {list(referenced)[:3]}; records: {list(paths)[:3]})")
    scored: list[ReferenceScore] = []
    for image_id in matched:
        captions = referenced[image_id]
        scores = captioner.score(paths[image_id], captions, batch_size=batch_size)
        scored += [ReferenceScore(image_id, paths[image_id], c, s) for c, s in zip(captions, scores, strict=True)]
    return sorted(scored, key=lambda row: row.score.mean)
