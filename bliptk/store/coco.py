"""COCO caption annotations (``captions_train2014.json`` and the like: ``images`` and
``annotations``), read in one place for evaluation's references and for training data.

The reader checks the file's shape and joins each annotation to its image's ``file_name``; what an
unusable annotation means (an error for references, a skipped row for training) is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CocoCaption:
    """One entry of ``annotations``, as written.

    Attributes:
        index: Its position in ``annotations``.
        image_id: Its ``image_id`` (None where it has none).
        file_name: The ``file_name`` of that image in ``images`` (None where it is not listed).
        caption: Its ``caption`` (None where it has none; not always a string).
        raw: The entry itself (not always an object).
    """

    index: int
    image_id: Any
    file_name: str | None
    caption: Any
    raw: Any

    @property
    def is_object(self) -> bool:
        """Whether the entry is a JSON object at all."""
        return isinstance(self.raw, dict)


def is_coco_captions(data) -> bool:
    """Whether parsed JSON is meant as COCO caption annotations (an object with ``annotations``)."""
    return isinstance(data, dict) and "annotations" in data


def coco_file_problem(data, *, images_needed: bool = False) -> str | None:
    """What is wrong with COCO caption annotations as a whole, or None.

    Args:
        data: Parsed JSON for which [`is_coco_captions`][bliptk.store.coco.is_coco_captions] holds.
        images_needed: Whether ``images`` must list the files (training reads the images; evaluation
            matches by id alone).
    """
    if not isinstance(data["annotations"], list):
        return f"annotations must be a list of {{image_id, caption}}, not {type(data['annotations']).__name__}"
    if images_needed and not isinstance(data.get("images"), list):
        return "COCO caption annotations need images, a list of {id, file_name}, to find each image"
    return None


def coco_captions(data) -> list[CocoCaption]:
    """Every annotation of COCO caption annotations whose
    [`coco_file_problem`][bliptk.store.coco.coco_file_problem] is None, in file order."""
    images = data.get("images")
    files = {entry.get("id"): entry.get("file_name") for entry in images if isinstance(entry, dict)} if isinstance(images, list) else {}
    captions = []
    for index, entry in enumerate(data["annotations"]):
        fields = entry if isinstance(entry, dict) else {}
        image_id = fields.get("image_id")
        file_name = files.get(image_id) if isinstance(image_id, int | str) else None
        captions.append(CocoCaption(index, image_id, file_name, fields.get("caption"), entry))
    return captions
