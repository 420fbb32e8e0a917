"""The one reader of COCO caption annotations, and its two callers (references, training data)."""

import json

import pytest

import bliptk
from bliptk.analysis.evaluation import load_references
from bliptk.store.coco import coco_captions, coco_file_problem, is_coco_captions
from bliptk.training.data import read_pairs

ANNOTATIONS = {
    "images": [{"id": 7, "file_name": "seven.jpg"}, {"id": 9, "file_name": "nine.jpg"}, "not an image"],
    "annotations": [
        {"image_id": 7, "caption": "a cat"},
        {"image_id": 9, "caption": "a dog"},
        {"image_id": 7, "caption": "a cat on a mat"},
        {"image_id": 3, "caption": "an unlisted image"},
        "not an annotation",
    ],
}


def test_each_annotation_is_joined_to_its_file_in_order():
    assert is_coco_captions(ANNOTATIONS) and not is_coco_captions([ANNOTATIONS]) and coco_file_problem(ANNOTATIONS) is None
    read = coco_captions(ANNOTATIONS)
    assert [(a.index, a.image_id, a.file_name, a.caption, a.is_object) for a in read] == [
        (0, 7, "seven.jpg", "a cat", True),
        (1, 9, "nine.jpg", "a dog", True),
        (2, 7, "seven.jpg", "a cat on a mat", True),
        (3, 3, None, "an unlisted image", True),
        (4, None, None, None, False),
    ]


def test_a_file_of_the_wrong_shape_is_said_once():
    assert coco_file_problem({"annotations": 3}) == "annotations must be a list of {image_id, caption}, not int"
    assert coco_file_problem({"annotations": []}) is None
    assert coco_file_problem({"annotations": []}, images_needed=True) == (
        "COCO caption annotations need images, a list of {id, file_name}, to find each image"
    )


def test_references_and_training_data_read_the_same_annotations(photos, tmp_path):
    good = {
        "images": [{"id": i, "file_name": p.name} for i, p in enumerate(photos[:2])],
        "annotations": [{"image_id": 0, "caption": "one"}, {"image_id": 1, "caption": "two"}, {"image_id": 0, "caption": "uno"}],
    }
    assert load_references(good) == {0: ["one", "uno"], 1: ["two"]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(good))
    pairs = read_pairs(path, photos[0].parent)
    assert [(p.name, c) for p, c in zip(pairs.images, pairs.captions, strict=True)] == [
        (photos[0].name, "one"),
        (photos[1].name, "two"),
        (photos[0].name, "uno"),
    ]
    without_images = tmp_path / "no-images.json"
    without_images.write_text(json.dumps({"annotations": good["annotations"]}))
    with pytest.raises(bliptk.InputError, match=r"no-images.json: COCO caption annotations need images"):
        read_pairs(without_images, photos[0].parent)
    assert load_references({"annotations": good["annotations"]}) == {0: ["one", "uno"], 1: ["two"]}
