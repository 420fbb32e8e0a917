"""Reading image-caption pairs: every format, bad rows counted and skipped, paths read as the OS reads them, UTF-8."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bliptk
from bliptk.training.data import read_pairs


@pytest.fixture
def folder(photos, tmp_path) -> Path:
    for photo in photos[:2]:
        shutil.copy(photo, tmp_path / photo.name)
    return tmp_path


def test_jsonl_rows_with_paths_relative_to_the_file(folder, photos):
    data = folder / "train.jsonl"
    data.write_text(
        json.dumps({"image": photos[0].name, "caption": " A dog. "})
        + "\n\n"
        + json.dumps({"image": photos[1].name, "caption": "a bus"})
        + "\n"
    )
    pairs = read_pairs(data)
    assert pairs.images == [folder / photos[0].name, folder / photos[1].name]
    assert pairs.captions == ["A dog.", "a bus"] and pairs.skipped == []


def test_bad_rows_are_counted_skipped_and_said(folder, photos):
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    rows = [
        {"image": photos[0].name, "caption": "kept"},
        {"image": "missing.jpg", "caption": "a cat"},
        {"image": photos[1].name, "caption": "   "},
        {"image": photos[1].name, "caption": 7},
        {"image": "broken.jpg", "caption": "a dog"},
        {"caption": "no image"},
    ]
    data = folder / "train.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n{not json\n")
    with pytest.warns(bliptk.DataWarning, match=r"train: 6 rows skipped \(train.jsonl line 2: .*missing.jpg is missing"):
        pairs = read_pairs(data)
    assert pairs.captions == ["kept"]
    reasons = [row.reason for row in pairs.skipped]
    assert reasons[1:5] == [
        "an empty caption",
        "the caption is int, not text",
        f"{folder / 'broken.jpg'} is no readable image (UnidentifiedImageError)",
        'no JSON object with "image" and "caption"',
    ]
    assert [row.where for row in pairs.skipped][-1] == "train.jsonl line 7"


def test_paths_are_read_as_the_os_reads_them(folder, photos, tmp_path_factory, monkeypatch):
    """Training data is the user's own: absolute paths, paths leading out of the file's folder,
    ~ and file:// URIs are all read (issue 31: each such row was skipped)."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    for name in ("a.jpg", "b.jpg", "c d.jpg", "e.jpg"):
        shutil.copy(photos[0], elsewhere / name)
    monkeypatch.setenv("HOME", str(elsewhere))
    rows = [
        {"image": str(elsewhere / "a.jpg"), "caption": "absolute"},
        {"image": f"../{elsewhere.name}/b.jpg", "caption": "relative, out of the folder"},
        {"image": (elsewhere / "c d.jpg").as_uri(), "caption": "a file URI"},
        {"image": "~/e.jpg", "caption": "home"},
    ]
    code = tmp_path_factory.mktemp("code")
    data = code / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    pairs = read_pairs(data)
    assert pairs.skipped == []
    assert pairs.images == [elsewhere / "a.jpg", code / f"../{elsewhere.name}/b.jpg", elsewhere / "c d.jpg", elsewhere / "e.jpg"]


def test_a_byte_order_mark_is_utf8_and_other_bytes_name_their_line(folder, photos):
    data = folder / "train.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": photos[0].name, "caption": "caf\u00e9"}, ensure_ascii=False).encode() + b"\n")
    assert read_pairs(data).captions == ["caf\u00e9"]
    coco = folder / "captions.json"
    coco.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"file_name": photos[0].name, "captions": ["one"]}]).encode())
    assert read_pairs(coco).captions == ["one"]
    data.write_bytes(json.dumps({"image": photos[0].name, "caption": "fine"}).encode() + b'\n{"image": "x.jpg", "caption": "caf\xe9"}\n')
    with pytest.raises(
        bliptk.InputError, match=r"train.jsonl: line 2 is not UTF-8 text \(byte 0xe9 at column 35\); save the file as UTF-8"
    ):
        read_pairs(data)


def test_a_folder_as_data_says_what_data_is(folder):
    with pytest.raises(bliptk.InputError, match=r"is a folder; training data is a .jsonl file of image-caption lines, or COCO"):
        read_pairs(folder)


def test_coco_annotations_and_the_references_format(folder, photos):
    coco = {
        "images": [{"id": 1, "file_name": photos[0].name}, {"id": 2, "file_name": photos[1].name}],
        "annotations": [{"image_id": 1, "caption": "one"}, {"image_id": 2, "caption": "two"}, {"image_id": 1, "caption": "uno"}],
    }
    (folder / "captions.json").write_text(json.dumps(coco))
    pairs = read_pairs(folder / "captions.json")
    assert pairs.captions == ["one", "two", "uno"] and pairs.images[2] == folder / photos[0].name
    assert pairs.references() == {str(folder / photos[0].name): ["one", "uno"], str(folder / photos[1].name): ["two"]}
    references = [{"image_id": 1, "file_name": photos[1].name, "captions": ["a", "b"]}]
    (folder / "references.json").write_text(json.dumps(references))
    assert read_pairs(folder / "references.json").captions == ["a", "b"]


def test_an_images_folder_roots_the_paths(folder, photos, tmp_path_factory):
    data = tmp_path_factory.mktemp("data") / "train.jsonl"
    data.write_text(json.dumps({"image": photos[0].name, "caption": "x"}) + "\n")
    assert read_pairs(data, images=folder).images == [folder / photos[0].name]


def test_pairs_in_memory_and_a_datasets_dataset(photos):
    image = Image.open(photos[0])
    pairs = read_pairs([(image, "a photo"), (np.zeros((8, 8, 3), np.uint8), "black"), (photos[1], "a path"), (None, "none")], name="val")
    assert pairs.captions == ["a photo", "black", "a path"] and len(pairs.skipped) == 1
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"image": [image, image], "text": ["one", ""]})
    with pytest.warns(bliptk.DataWarning, match="1 rows skipped"):
        assert read_pairs(dataset).captions == ["one"]


def test_the_fingerprint_follows_images_and_captions(photos):
    first = read_pairs([(photos[0], "a"), (photos[1], "b")]).fingerprint()
    assert first == read_pairs([(photos[0], "a"), (photos[1], "b")]).fingerprint()
    assert first != read_pairs([(photos[0], "a"), (photos[1], "c")]).fingerprint()
    assert first != read_pairs([(photos[1], "a"), (photos[0], "b")]).fingerprint()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda d: d / "nothing.jsonl", bliptk.InputError, "no such file"),
        (lambda d: (d / "a.json").write_text("{") and d / "a.json", bliptk.InputError, "not JSON"),
        (lambda d: (d / "b.json").write_text("[1, 2]") and d / "b.json", bliptk.InputError, "neither COCO caption annotations"),
        (lambda d: (d / "c.jsonl").write_text('{"image": "x.jpg", "caption": "a"}\n') and d / "c.jsonl", bliptk.InputError, "no usable"),
        (lambda d: 42, bliptk.InvalidArgumentError, "train must be a .jsonl"),
        (lambda d: [("only one",)], bliptk.InvalidArgumentError, "pair 0 is no"),
    ],
)
def test_unusable_data_is_named(tmp_path, make, error, message):
    with pytest.raises(error, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore", bliptk.DataWarning)  # the skipped rows of a file with none left
        read_pairs(make(tmp_path))


def test_an_upper_case_suffix_and_a_folder_named_as_an_image(folder, photos):
    (folder / "dir.jpg").mkdir()
    data = folder / "DATA.JSONL"
    data.write_text(
        json.dumps({"image": photos[0].name, "caption": "kept"}) + "\n" + json.dumps({"image": "dir.jpg", "caption": "x"}) + "\n"
    )
    with pytest.warns(bliptk.DataWarning):
        pairs = read_pairs(data)
    assert pairs.captions == ["kept"] and [row.reason for row in pairs.skipped] == [f"{folder / 'dir.jpg'} is a folder, not an image"]
