import json
import shutil

import pytest
from conftest import DATA

import bliptk
from bliptk.analysis.evaluation import load_predictions, load_references
from bliptk.cli.main import main
from bliptk.store.records import read_records

REFERENCES = {
    1: ["a cat sitting on a red couch", "a black cat lies on the sofa", "a cat resting on a couch"],
    2: ["two dogs run across a grassy field", "dogs playing in the grass", "a pair of dogs running outside"],
    3: ["a plate of pasta with tomato sauce", "spaghetti on a white plate", "a bowl of noodles with sauce"],
}
PREDICTIONS = [
    {"image_id": 1, "caption": "a cat lying on a red couch"},
    {"image_id": 2, "caption": "two dogs running in a field"},
    {"image_id": 3, "caption": "a plate of food on a table"},
]


# The metrics run Java (PTB tokenization, METEOR), seconds a call: slow, outside the inner loop.
needs_java = pytest.mark.slow(pytest.mark.java(pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need Java")))


@pytest.fixture(scope="module")
def result():
    return bliptk.evaluate(PREDICTIONS, REFERENCES)


@needs_java
def test_metrics_equal_pycocoevalcap_run_directly(result):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    truths = tokenizer.tokenize({i: [{"caption": c} for c in captions] for i, captions in REFERENCES.items()})
    results = tokenizer.tokenize({p["image_id"]: [{"caption": p["caption"]}] for p in PREDICTIONS})
    bleu, _ = Bleu(4).compute_score(truths, results)
    meteor, _ = Meteor().compute_score(truths, results)
    rouge, _ = Rouge().compute_score(truths, results)
    cider, per_image = Cider().compute_score(truths, results)
    expected = {
        "Bleu_1": bleu[0],
        "Bleu_2": bleu[1],
        "Bleu_3": bleu[2],
        "Bleu_4": bleu[3],
        "METEOR": meteor,
        "ROUGE_L": rouge,
        "CIDEr": cider,
    }
    assert result.metrics == pytest.approx(expected, abs=1e-9)
    assert sorted(c for _, _, c in result.per_image) == pytest.approx(sorted(per_image))
    assert 0 < result.metrics["Bleu_4"] < result.metrics["Bleu_1"] < 1


@needs_java
def test_per_image_cider_lists_the_worst_first(result):
    assert [image_id for image_id, _, _ in result.per_image][0] == 3
    ciders = [c for _, _, c in result.per_image]
    assert ciders == sorted(ciders) and "CIDEr" in str(result)


def test_input_formats(tmp_path):
    coco = {
        "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in REFERENCES],
        "annotations": [{"image_id": i, "id": 10 * i + k, "caption": c} for i, caps in REFERENCES.items() for k, c in enumerate(caps)],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    assert load_references(tmp_path / "annotations.json") == REFERENCES
    assert load_references([{"image_id": i, "captions": c} for i, c in REFERENCES.items()]) == REFERENCES
    records = tmp_path / "records.jsonl"
    records.write_text(
        "".join(
            json.dumps(
                {
                    "path": f"photos/COCO_val2014_{p['image_id']:012d}.jpg",
                    "caption": p["caption"],
                    "error": None,
                    "model": "m",
                    "options": {},
                }
            )
            + "\n"
            for p in PREDICTIONS
        )
        + json.dumps(
            {
                "path": "photos/COCO_val2014_000000000009.jpg",
                "caption": None,
                "error": {"type": "ImageLoadError", "message": "x"},
                "model": "m",
                "options": {},
            }
        )
        + "\n"
    )
    assert load_predictions(records, numeric_ids=True) == {p["image_id"]: p["caption"] for p in PREDICTIONS}
    assert load_predictions(records) == {f"COCO_val2014_{p['image_id']:012d}": p["caption"] for p in PREDICTIONS}


def test_mismatched_ids_say_how_many_are_missing_on_each_side():
    with pytest.raises(
        bliptk.EvaluationError, match=r"1 predictions have no references \(e.g. \[7\]\), 2 references have no prediction \(e.g. \[2, 3\]\)"
    ):
        bliptk.evaluate(PREDICTIONS[:1] + [{"image_id": 7, "caption": "x"}], REFERENCES)


def test_malformed_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(bliptk.EvaluationError, match="broken.json: not valid JSON"):
        bliptk.evaluate(broken, REFERENCES)
    with pytest.raises(bliptk.EvaluationError, match="prediction 0 is not"):
        bliptk.evaluate([{"id": 1, "text": "a cat"}], REFERENCES)
    with pytest.raises(bliptk.EvaluationError, match="no such file"):
        bliptk.evaluate(tmp_path / "missing.json", REFERENCES)
    with pytest.raises(bliptk.EvaluationError, match="annotation without image_id and caption"):
        bliptk.evaluate(PREDICTIONS, {"annotations": [{"caption": "x"}]})


@pytest.mark.slow
@needs_java
def test_cli_eval_and_eval_coco(tiny, photos, tmp_path, capsys):
    predictions = tmp_path / "predictions.json"
    predictions.write_text(json.dumps(PREDICTIONS))
    references = tmp_path / "references.json"
    references.write_text(json.dumps({str(k): v for k, v in REFERENCES.items()}))
    assert main(["eval", str(predictions), str(references), "--worst", "1"]) == 0
    out = capsys.readouterr().out
    assert "Bleu_4" in out and "lowest CIDEr (1 of 3)" in out and "3: a plate of food on a table" in out

    results = tmp_path / "results.json"
    args = [
        "eval-coco",
        "--images",
        str(photos[0].parent),
        "--annotations",
        str(DATA / "references.json"),
        "--model",
        "tiny",
        "--out",
        str(results),
    ]
    assert main(args) == 0
    written = json.loads(results.read_text())
    assert sorted(r["image_id"] for r in written) == [42, 1146, 1180]
    # The paper's settings: "a picture of ", 3 beams, at most 20 tokens with the prompt's 4, at least 5.
    expected = tiny.caption(photos[0], prompt="a picture of ", num_beams=3, max_new_tokens=16, min_new_tokens=1)
    assert [r["caption"] for r in written if r["image_id"] == 42] == [expected.text]
    assert "CIDEr" in capsys.readouterr().out
    records = results.with_suffix(".jsonl")
    captioned = records.read_text()
    assert main(args + ["--resume"]) == 0
    assert records.read_text() == captioned and json.loads(results.read_text()) == written  # nothing captioned again
    assert "3 captions written" in capsys.readouterr().out


@pytest.mark.slow
@needs_java
def test_eval_coco_resumed_onto_another_runs_records_scores_its_own(tiny, photos, tmp_path, capsys):
    """The records beside the results held an earlier caption run's, of other options: eval-coco
    took both, and failed on each image's two predictions (issue 31's probe)."""
    results = tmp_path / "results.json"
    assert (
        main(["caption", str(photos[0].parent), "--model", "tiny", "--max-new-tokens", "3", "--out", str(results.with_suffix(".jsonl"))])
        == 0
    )
    args = ["eval-coco", "--images", str(photos[0].parent), "--annotations", str(DATA / "references.json"), "--model", "tiny"]
    assert main([*args, "--out", str(results), "--resume"]) == 0
    written = json.loads(results.read_text())
    expected = tiny.caption(photos[0], prompt="a picture of ", num_beams=3, max_new_tokens=16, min_new_tokens=1)
    assert len(written) == 3 and [r["caption"] for r in written if r["image_id"] == 42] == [expected.text]
    assert len(read_records(results.with_suffix(".jsonl"))) == 6  # both runs' records kept


INSTANCES = {
    "images": [{"id": 1}, {"id": 2}, {"id": 3}],
    "categories": [{"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}, {"id": 63, "name": "couch"}, {"id": 51, "name": "bowl"}],
    "annotations": [
        {"image_id": 1, "category_id": 17},
        {"image_id": 1, "category_id": 63},
        {"image_id": 2, "category_id": 18},
        {"image_id": 3, "category_id": 51},
    ],
}


@needs_java
def test_chair_is_reported_beside_the_metrics(result):
    from bliptk.analysis.chair import chair

    with_objects = bliptk.evaluate(PREDICTIONS, REFERENCES, instances=INSTANCES)
    assert {k: v for k, v in with_objects.metrics.items() if not k.startswith("CHAIR")} == result.metrics and result.chair is None
    # image 3's "table" is neither annotated nor in its references: hallucinated; the rest are held
    captions = {1: "a cat lying on a red couch", 2: "two dogs running in a field", 3: "a plate of food on a table"}
    direct = chair(captions, {1: {"cat", "couch"}, 2: {"dog"}, 3: {"bowl"}})
    assert with_objects.chair.chair_s == direct.chair_s == pytest.approx(1 / 3)
    assert with_objects.metrics["CHAIRs"] == pytest.approx(1 / 3) and with_objects.metrics["CHAIRi"] == pytest.approx(direct.chair_i)


@needs_java
def test_chair_from_the_references_alone_and_on_the_command_line(tmp_path, capsys):
    from_references = bliptk.evaluate(PREDICTIONS, REFERENCES, chair=True)  # the references' objects alone
    assert from_references.chair.chair_s == pytest.approx(1 / 3)
    (tmp_path / "instances.json").write_text(json.dumps(INSTANCES))
    (tmp_path / "refs.json").write_text(json.dumps({str(k): v for k, v in REFERENCES.items()}))
    (tmp_path / "preds.json").write_text(json.dumps(PREDICTIONS))
    assert main(["eval", str(tmp_path / "preds.json"), str(tmp_path / "refs.json"), "--instances", str(tmp_path / "instances.json")]) == 0
    out = capsys.readouterr().out
    assert "CHAIRs     33.3" in out and "hallucinated objects (1 of 3 captions):\n  3: a plate of food on a table [table]" in out
