"""CHAIR, object hallucination: golden cases written by hand, and COCO annotation files made here."""

import json

import pytest

import bliptk
from bliptk.analysis.chair import (
    COCO_CATEGORIES,
    chair,
    coco_instance_objects,
    mention_confidence,
    mentioned_objects,
    reference_objects,
)
from bliptk.analysis.evaluation import load_references


def _named(caption):
    return [(m.words, m.category) for m in mentioned_objects(caption)]


@pytest.mark.parametrize(
    "caption, expected",
    [
        # synonyms
        ("A puppy chases a kitten past a sofa", [("puppy", "dog"), ("kitten", "cat"), ("sofa", "couch")]),
        ("a guy on his motorbike beside a taxi", [("guy", "person"), ("motorbike", "motorcycle"), ("taxi", "car")]),
        # plurals, regular and not, and words whose singular is not a plural's (bus, glass)
        ("Two women and their children with giraffes", [("women", "person"), ("children", "person"), ("giraffes", "giraffe")]),
        ("buses and a bus near some knives", [("buses", "bus"), ("bus", "bus"), ("knives", "knife")]),
        ("sheep and mice", [("sheep", "sheep"), ("mice", "mouse")]),
        # two-word names are read whole: a hot dog is no dog, a teddy bear no bear
        ("a man eating a hot dog next to two dogs", [("man", "person"), ("hot dog", "hot dog"), ("dogs", "dog")]),
        ("a teddy bear on a bed beside a bear", [("teddy bear", "teddy bear"), ("bed", "bed"), ("bear", "bear")]),
        ("hot dogs and teddy bears", [("hot dogs", "hot dog"), ("teddy bears", "teddy bear")]),
        ("a stop sign by a fire hydrant", [("stop sign", "stop sign"), ("fire hydrant", "fire hydrant")]),
        ("a baseball player swings a baseball bat at home plate", [("baseball player", "person"), ("baseball bat", "baseball bat")]),
        ("a cell phone and a wine glass", [("cell phone", "cell phone"), ("wine glass", "wine glass")]),
        # phrases that name no object
        ("people waiting at a bus stop by the train tracks", [("people", "person")]),
        ("a snowy ski slope", []),
        # repeated mentions, all kept in order
        ("A dog, a dog and another dog.", [("dog", "dog"), ("dog", "dog"), ("dog", "dog")]),
        # no object at all
        ("a view of the blue sky over the hills", []),
        ("", []),
    ],
)
def test_mentions_follow_the_papers_rules(caption, expected):
    assert _named(caption) == expected


def test_chair_s_and_chair_i_on_hand_counted_captions():
    captions = [
        "a dog and a cat on a sofa",  # cat hallucinated; dog, couch held
        "a man with a frisbee and a frisbee",  # frisbee hallucinated, said twice: one object
        "a view of the sky",  # no object: not a hallucination, and no mention
        "a woman holding an umbrella",  # all held
    ]
    objects = [{"dog", "couch"}, {"person"}, set(), {"person", "umbrella"}]
    result = chair(captions, objects)
    assert result.chair_s == pytest.approx(2 / 4)
    # objects mentioned, each caption's counted once: {dog, cat, couch} + {person, frisbee} + {} + {person, umbrella} = 7
    assert result.chair_i == pytest.approx(2 / 7)
    assert [[m.words for m in c.hallucinated] for c in result.captions] == [["cat"], ["frisbee", "frisbee"], [], []]
    assert [m.hallucinated for m in result.captions[0].mentioned] == [False, True, False]
    assert str(result) == "CHAIRs    50.0\nCHAIRi    28.6"


def test_captions_and_objects_by_image_id():
    result = chair({7: "a dog on a bed", 9: "a cat"}, {7: {"Dog", "bed"}, 9: {"dog"}, 11: {"cat"}})
    assert result.ids == [7, 9] and result.chair_s == 0.5 and result.chair_i == pytest.approx(1 / 3)
    assert chair([], []).chair_s == 0.0 and chair(["a sky"], [set()]).chair_i == 0.0


@pytest.mark.parametrize(
    "captions, objects, error, message",
    [
        (["a dog"], [{"puppy"}], bliptk.EvaluationError, r"objects 0: 'puppy' is not a COCO object category; 'puppy' is a word for 'dog'"),
        (
            ["a dog"],
            [{"unicorn"}],
            bliptk.EvaluationError,
            r"objects 0: 'unicorn' is not a COCO object category; the categories are person",
        ),
        (["a dog", "a cat"], [{"dog"}], bliptk.EvaluationError, r"2 captions and 1 sets of objects: give one set per caption"),
        ({1: "a dog"}, {2: {"dog"}}, bliptk.EvaluationError, r"1 captioned images have no objects \(e.g. \[1\]\)"),
        (["a dog"], ["dog"], bliptk.InvalidArgumentError, r"objects 0: objects must be a set of COCO category names, got str"),
        ([3], [set()], bliptk.InvalidArgumentError, r"a caption must be a string, got int"),
    ],
)
def test_bad_ground_truth_is_refused_naming_it(captions, objects, error, message):
    with pytest.raises(error, match=message):
        chair(captions, objects)


def _coco_files(tmp_path):
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(COCO_CATEGORIES)]
    ids = {name: i + 1 for i, name in enumerate(COCO_CATEGORIES)}
    instances = {
        "images": [{"id": 42, "file_name": "a.jpg"}, {"id": 73, "file_name": "b.jpg"}, {"id": 74, "file_name": "c.jpg"}],
        "categories": categories,
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": ids["dog"]},
            {"id": 2, "image_id": 42, "category_id": ids["dog"]},
            {"id": 3, "image_id": 42, "category_id": ids["frisbee"]},
            {"id": 4, "image_id": 73, "category_id": ids["pizza"]},
        ],
    }
    captions = {
        "images": instances["images"],
        "annotations": [
            {"image_id": 42, "caption": "a dog catching a frisbee on the grass"},
            {"image_id": 42, "caption": "a man throws a frisbee to his dog"},
            {"image_id": 73, "caption": "a pizza on a table"},
            {"image_id": 74, "caption": "an empty street"},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return tmp_path / "instances.json", tmp_path / "captions.json"


def test_ground_truth_from_instance_files_references_or_both(tmp_path):
    instances, captions = _coco_files(tmp_path)
    annotated = coco_instance_objects(instances)
    assert annotated == {42: {"dog", "frisbee"}, 73: {"pizza"}, 74: set()}
    mentioned = reference_objects(load_references(captions))
    assert mentioned == {42: {"dog", "frisbee", "person"}, 73: {"pizza", "dining table"}, 74: set()}
    predictions = {42: "a man and a dog with a frisbee", 73: "a pizza and a fork on a table", 74: "a car on a street"}
    by_instances = chair(predictions, annotated)
    both = chair(predictions, {i: annotated[i] | mentioned[i] for i in predictions})
    assert by_instances.chair_s == 1.0 and both.chair_s == pytest.approx(2 / 3)  # the man and the table are in the references
    assert [sorted(m.category for m in c.hallucinated) for c in both.captions] == [[], ["fork"], ["car"]]


def test_bad_instance_files(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"annotations": [{"image_id": 1, "category_id": 999}], "categories": []}))
    with pytest.raises(bliptk.EvaluationError, match=r"annotation 0 names category 999, which categories does not define"):
        coco_instance_objects(tmp_path / "bad.json")
    with pytest.raises(bliptk.EvaluationError, match=r"instances: not COCO instance annotations"):
        coco_instance_objects({"images": []})
    with pytest.raises(bliptk.EvaluationError, match=r"gone.json: no such file"):
        coco_instance_objects(tmp_path / "gone.json")


def test_each_mention_gets_the_logprob_of_its_words(tiny, photos):
    captions = ["a dog and a hot dog", "a teddy bear"]
    result = chair(captions, [{"dog"}, set()])
    scores = tiny.score([photos[0], photos[1]], captions, prompt="")
    rows = mention_confidence(result, scores)
    assert [(r.caption, r.mention.words, r.mention.hallucinated) for r in rows] == [
        (0, "dog", False),
        (0, "hot dog", True),
        (1, "teddy bear", True),
    ]
    words = scores[0].words()  # a, dog, and, a, hot, dog, [SEP]
    assert rows[0].logprob == pytest.approx(words[1][1]) and rows[1].logprob == pytest.approx(words[4][1] + words[5][1])
    assert rows[1].margin == pytest.approx(min(words[4][2], words[5][2]))


def test_odd_but_valid_captions_and_mistakes_found_by_a_probe(tiny, photos):
    assert _named("a hot-dog and a t-shirt by the Teddy-Bear") == [("hot dog", "hot dog"), ("teddy bear", "teddy bear")]
    result = chair(["A hot-dog, and 2 dogs!"], [{"dog"}])
    rows = mention_confidence(result, tiny.score(photos[0], ["A hot-dog, and 2 dogs!"], prompt=""))
    assert [(r.mention.words, r.mention.hallucinated) for r in rows] == [("hot dog", True), ("dogs", False)]
    with pytest.raises(bliptk.EvaluationError, match=r"caption 0 names 'hot dog', which its score \('a cat'\) does not hold"):
        mention_confidence(result, tiny.score(photos[0], ["a cat"], prompt=""))
    with pytest.raises(bliptk.InvalidArgumentError, match=r"scores must be a list of CaptionScore, one per caption, got NoneType"):
        mention_confidence(result, None)
    with pytest.raises(bliptk.InvalidArgumentError, match=r"captions must be a list of captions or \{image_id: caption\}, got str"):
        chair("a dog", [{"dog"}])
    with pytest.raises(bliptk.EvaluationError, match=r"references of 1 must be a list of captions \(strings\), got a man with a dog"):
        reference_objects({1: "a man with a dog"})
    with pytest.raises(bliptk.EvaluationError, match=r"references must be \{image_id: \[captions\]\}"):
        reference_objects(["a dog"])
