"""Object hallucination: CHAIR (Rohrbach et al., *Object Hallucination in Image Captioning*,
EMNLP 2018), the share of captions, and of object mentions, that name an object the image does not
hold.

A caption's words are read against the 80 MS-COCO object categories and the words each is named
by (bliptk's own table, ``bliptk/assets/coco_objects.json``): lower case, each word's singular
form (``inflect``) where that is a known name, and names of two or three words read before their
words, so that a hot dog is no dog and a teddy bear no bear; phrases such as "bus stop" name no
object. An image's objects come from COCO instance annotations, from its reference captions (the
objects they mention), or both, as the paper takes them.

* CHAIR-s: captions that mention at least one object the image does not hold, over all captions.
* CHAIR-i: hallucinated objects over all objects mentioned, each caption's objects counted once.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..core.errors import EvaluationError, InvalidArgumentError
from ..core.optional import optional

__all__ = [
    "COCO_CATEGORIES",
    "CaptionObjects",
    "ChairResult",
    "Mention",
    "MentionConfidence",
    "chair",
    "coco_instance_objects",
    "mention_confidence",
    "mentioned_objects",
    "reference_objects",
]

_LONGEST = 3  # words in the longest name


@functools.cache
def _asset() -> dict:
    """bliptk's table of the COCO categories and their names (``bliptk/assets/coco_objects.json``), read once."""
    return json.loads(resources.files("bliptk.assets").joinpath("coco_objects.json").read_text())


@functools.cache
def _table() -> tuple[dict[str, str | None], frozenset[str]]:
    """Each name (singular, lower case) -> its category, or None for a phrase that names no
    object; and every word of those names."""
    data = _asset()
    names: dict[str, str | None] = {name: category for category, all_names in data["categories"].items() for name in all_names}
    names.update({phrase: None for phrase in data["not_objects"]})
    return names, frozenset(word for name in names for word in name.split())


COCO_CATEGORIES: tuple[str, ...] = tuple(_asset()["categories"])
"""The 80 MS-COCO object categories, in COCO's order."""


@functools.cache
def _inflect():
    return optional("inflect").engine()


@functools.cache
def _singular(word: str) -> str:
    """A word's singular form where that is a word of the table (``dogs`` -> ``dog``, ``men`` ->
    ``man``); the word itself otherwise (``bus`` stays ``bus``, ``glass`` ``glass``)."""
    _, known = _table()
    if word in known:
        return word
    singular = _inflect().singular_noun(word)
    return singular if singular and singular in known else word


@dataclass(frozen=True)
class Mention:
    """One object a caption names.

    Attributes:
        words: The words that name it, as written (``"hot dogs"``).
        category: The COCO category (``"hot dog"``).
        index: The position of its first word among the caption's words.
        hallucinated: The image does not hold it (False where no objects were given).
    """

    words: str
    category: str
    index: int
    hallucinated: bool = False


def _words(caption: str) -> list[str]:
    return re.findall(r"[a-z]+", caption.lower())


def mentioned_objects(caption: str) -> list[Mention]:
    """Every object a caption names, in order, repeats included.

    Raises:
        InvalidArgumentError: The caption is no string.
        MissingDependencyError: ``inflect`` is not installed.
    """
    if not isinstance(caption, str):
        raise InvalidArgumentError(f"a caption must be a string, got {type(caption).__name__} {str(caption)[:60]!r}")
    names, _ = _table()
    words = _words(caption)
    singular = [_singular(word) for word in words]
    mentions, index = [], 0
    while index < len(words):
        for length in range(min(_LONGEST, len(words) - index), 0, -1):
            name = " ".join(singular[index : index + length])
            if name in names:
                category = names[name]
                if category is not None:
                    mentions.append(Mention(" ".join(words[index : index + length]), category, index))
                index += length
                break
        else:
            index += 1
    return mentions


@dataclass(frozen=True)
class CaptionObjects:
    """What one caption names, against what its image holds.

    Attributes:
        caption: The caption.
        objects: The categories the image holds (the ground truth).
        mentioned: Every mention, in order (repeats included), each marked hallucinated or not.
    """

    caption: str
    objects: frozenset[str]
    mentioned: list[Mention]

    @property
    def hallucinated(self) -> list[Mention]:
        """The mentions of objects the image does not hold."""
        return [mention for mention in self.mentioned if mention.hallucinated]

    @property
    def categories(self) -> set[str]:
        """The categories mentioned (each once)."""
        return {mention.category for mention in self.mentioned}


@dataclass(frozen=True)
class ChairResult:
    """CHAIR of a set of captions.

    Attributes:
        chair_s: Captions with at least one hallucinated object, over all captions.
        chair_i: Hallucinated objects over all objects mentioned (each caption's objects counted
            once): 0 where no caption mentions an object.
        captions: Each caption's [`CaptionObjects`][bliptk.analysis.chair.CaptionObjects], in order.
        ids: Each caption's image id, where the captions were given by id.
    """

    chair_s: float
    chair_i: float
    captions: list[CaptionObjects]
    ids: list = field(default_factory=list)

    def __str__(self) -> str:
        return f"CHAIRs  {self.chair_s * 100:6.1f}\nCHAIRi  {self.chair_i * 100:6.1f}"


def _categories(objects, where: str) -> frozenset[str]:
    """An image's objects as COCO categories (names in any case).

    Raises:
        EvaluationError: A name that is no COCO category (saying the category a synonym names).
    """
    if isinstance(objects, str) or not isinstance(objects, Iterable):
        raise InvalidArgumentError(f"{where}: objects must be a set of COCO category names, got {type(objects).__name__}")
    names, _ = _table()
    found = set()
    for name in objects:
        text = str(name).strip().lower()
        if text not in COCO_CATEGORIES:
            meant = names.get(text)
            hint = f"; {text!r} is a word for {meant!r}" if meant else f"; the categories are {', '.join(COCO_CATEGORIES[:6])}, ..."
            raise EvaluationError(f"{where}: {name!r} is not a COCO object category{hint}")
        found.add(text)
    return frozenset(found)


def chair(captions, objects) -> ChairResult:
    """CHAIR of captions against the objects their images hold.

    Args:
        captions: A list of captions, or ``{image_id: caption}``.
        objects: For a list, one set of COCO category names per caption; for a map,
            ``{image_id: set}`` (what [`coco_instance_objects()`][bliptk.analysis.chair.coco_instance_objects]
            and [`reference_objects()`][bliptk.analysis.chair.reference_objects] give; join both
            with ``|`` per image, as the paper does).

    Returns:
        A [`ChairResult`][bliptk.analysis.chair.ChairResult].

    Raises:
        EvaluationError: Objects that are not COCO categories, or captions without objects (an
            image id missing from ``objects``, lists of different lengths).
    """
    if isinstance(captions, str) or not isinstance(captions, Mapping | list | tuple):
        raise InvalidArgumentError(f"captions must be a list of captions or {{image_id: caption}}, got {type(captions).__name__}")
    if isinstance(captions, Mapping):
        if not isinstance(objects, Mapping):
            raise InvalidArgumentError("captions given by image id need objects by image id, {image_id: set of categories}")
        missing = [key for key in captions if key not in objects]
        if missing:
            raise EvaluationError(f"{len(missing)} captioned images have no objects (e.g. {missing[:3]}); give each its set, empty if none")
        ids = list(captions)
        texts, truths = [captions[key] for key in ids], [objects[key] for key in ids]
    else:
        ids, texts, truths = [], list(captions), list(objects)
        if len(texts) != len(truths):
            raise EvaluationError(f"{len(texts)} captions and {len(truths)} sets of objects: give one set per caption")
    results = []
    for index, (text, truth) in enumerate(zip(texts, truths, strict=True)):
        held = _categories(truth, f"image {ids[index]!r}" if ids else f"objects {index}")
        mentions = [Mention(m.words, m.category, m.index, m.category not in held) for m in mentioned_objects(text)]
        results.append(CaptionObjects(text, held, mentions))
    with_objects = sum(len(result.categories) for result in results)
    hallucinated = sum(len({m.category for m in result.hallucinated}) for result in results)
    return ChairResult(
        chair_s=sum(bool(result.hallucinated) for result in results) / len(results) if results else 0.0,
        chair_i=hallucinated / with_objects if with_objects else 0.0,
        captions=results,
        ids=ids,
    )


def coco_instance_objects(instances) -> dict[int, set[str]]:
    """``{image_id: set of categories}`` from COCO instance annotations (``instances_val2014.json``:
    ``categories``, ``annotations`` with ``image_id`` and ``category_id``, and ``images``, each of
    which gets a set, empty where it has no annotation).

    Args:
        instances: The file's path, or its parsed JSON.

    Raises:
        EvaluationError: Not COCO instance annotations, or a category id it does not define.
    """
    data = _read_instances(instances)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list) or not isinstance(data.get("categories"), list):
        raise EvaluationError("instances: not COCO instance annotations (categories, annotations with image_id and category_id)")
    names = {entry.get("id"): str(entry.get("name", "")).lower() for entry in data["categories"] if isinstance(entry, dict)}
    objects: dict[int, set[str]] = {
        entry["id"]: set() for entry in data.get("images", []) if isinstance(entry, dict) and isinstance(entry.get("id"), int)
    }
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or "image_id" not in annotation or "category_id" not in annotation:
            raise EvaluationError(f"instances: annotation {index} has no image_id and category_id: {str(annotation)[:80]}")
        if annotation["category_id"] not in names:
            raise EvaluationError(
                f"instances: annotation {index} names category {annotation['category_id']!r}, which categories does not define"
            )
        objects.setdefault(annotation["image_id"], set()).add(names[annotation["category_id"]])
    for image_id, found in objects.items():
        _categories(found, f"instances image {image_id}")
    return objects


def _read_instances(instances):
    """Parsed instance annotations: the JSON itself, or read from a file."""
    if not isinstance(instances, str | os.PathLike):
        return instances
    path = Path(instances)
    if not path.is_file():
        raise EvaluationError(f"instances {path}: no such file")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvaluationError(f"instances {path}: not a JSON file ({error})") from None


def reference_objects(references: Mapping) -> dict:
    """``{image_id: set of categories}``: the objects an image's reference captions mention.

    Args:
        references: ``{image_id: [captions]}``, as
            [`load_references()`][bliptk.analysis.evaluation.load_references] reads any references file.

    Raises:
        EvaluationError: References that are not a list of captions per image id.
    """
    if not isinstance(references, Mapping):
        raise EvaluationError(
            f"references must be {{image_id: [captions]}} (load_references reads a file), got {type(references).__name__}"
        )
    objects = {}
    for image_id, captions in references.items():
        if isinstance(captions, str) or not isinstance(captions, list | tuple) or not all(isinstance(c, str) for c in captions):
            raise EvaluationError(f"references of {image_id!r} must be a list of captions (strings), got {str(captions)[:80]}")
        objects[image_id] = {mention.category for caption in captions for mention in mentioned_objects(caption)}
    return objects


@dataclass(frozen=True)
class MentionConfidence:
    """An object mention with the model's log-probability of its words.

    Attributes:
        caption: Which caption (its index).
        mention: The [`Mention`][bliptk.analysis.chair.Mention] (``hallucinated`` or not).
        logprob: The summed log-probability of its words' tokens.
        margin: The lowest margin of its tokens over the best other token.
    """

    caption: int
    mention: Mention
    logprob: float
    margin: float


def mention_confidence(result: ChairResult, scores) -> list[MentionConfidence]:
    """Each object mention of each caption with how sure the model was of its words: whether the
    hallucinated objects are the less certain ones.

    Args:
        result: CHAIR of the captions.
        scores: Each caption's [`CaptionScore`][bliptk.core.scoring.CaptionScore] (from
            ``captioner.score(images, captions)``, or the captions' own ``logprobs``), in order.

    Returns:
        One row per mention, in caption order.
    """
    if not isinstance(scores, list | tuple):
        raise InvalidArgumentError(f"scores must be a list of CaptionScore, one per caption, got {type(scores).__name__}")
    if len(scores) != len(result.captions):
        raise EvaluationError(f"{len(scores)} scores for {len(result.captions)} captions: score each caption once")
    rows = []
    for index, (objects, scored) in enumerate(zip(result.captions, scores, strict=True)):
        # the caption's words as the mentions were read ([a-z]+: "hot-dog" is "hot", "dog"), each
        # with its WordPieces' log-probability and lowest margin
        words = [(part, lp, margin) for w, lp, margin in scored.words() if w != "[SEP]" for part in _words(w)]
        cursor = 0
        for mention in objects.mentioned:
            wanted = mention.words.split()
            for start in range(cursor, len(words) - len(wanted) + 1):
                if [w for w, _, _ in words[start : start + len(wanted)]] == wanted:
                    span = words[start : start + len(wanted)]
                    rows.append(MentionConfidence(index, mention, sum(lp for _, lp, _ in span), min(m for _, _, m in span)))
                    cursor = start + len(wanted)
                    break
            else:
                raise EvaluationError(
                    f"caption {index} names {mention.words!r}, which its score ({scored.text[:60]!r}) does not hold: "
                    "give each caption's own score, in order"
                )
    return rows
