import json
import subprocess
import sys

import pytest

from bliptk.cli import main


def test_models_prints_the_family(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "ViT-B/16" in out and "Salesforce/blip-image-captioning-large" in out and "(577, 768)" in out


def test_caption_prints_the_same_caption_as_the_api(tiny, photos, capsys):
    assert main(["caption", str(photos[0]), "--model", "tiny", "--prompt", "the woman", "--max-new-tokens", "6"]) == 0
    expected = tiny.caption(photos[0], prompt="the woman", max_new_tokens=6)
    assert capsys.readouterr().out == f"{photos[0]}: {expected.text}\n"


def test_json_records(tiny, photos, capsys):
    args = ["caption", *map(str, photos[:2]), "--model", "tiny", "--json", "--temperature", "0.7", "--seed", "3", "--max-new-tokens", "5"]
    assert main(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = tiny.caption(photos[:2], temperature=0.7, seed=3, max_new_tokens=5)
    assert [r["path"] for r in records] == list(map(str, photos[:2]))
    assert [r["token_ids"] for r in records] == [c.token_ids for c in expected]
    assert records[0]["model"] == "tiny" and records[0]["options"]["temperature"] == 0.7
    assert records[0]["logprobs"] == pytest.approx(expected[0].logprobs)


def test_a_missing_file_fails_alone(tiny, photos, capsys, tmp_path):
    missing = tmp_path / "gone.jpg"
    assert main(["caption", str(missing), str(photos[0]), "--model", "tiny", "--max-new-tokens", "3"]) == 1
    captured = capsys.readouterr()
    assert f"bliptk: error: {missing}: no such file" in captured.err
    assert captured.out.startswith(f"{photos[0]}: a photography of")


@pytest.mark.parametrize(
    "option, message",
    [
        (["--max-new-tokens", "-3"], "max_new_tokens must be a non-negative integer"),
        (["--temperature", "-1"], "temperature must be a finite number >= 0"),
        (["--top-k", "0"], "top_k must be an integer >= 1"),
        (["--top-p", "2"], r"top_p must be in (0, 1]"),
        (["--model", "vit-huge"], "unknown model 'vit-huge'"),
        (["--device", "cuda:99"], "cuda:99"),
    ],
)
def test_bad_options_exit_2_with_a_clear_error(photos, capsys, option, message):
    assert main(["caption", str(photos[0]), "--model", "tiny", *option]) == 2
    assert message in capsys.readouterr().err


def test_info_prints_counts(capsys):
    assert main(["info", "--model", "tiny", "--arrays"]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 1,129,324" in out and "Linear: 30" in out
    assert "text_decoder.bert.embeddings.word_embeddings.weight: 976,768" in out


def test_console_script_and_module_entry_point():
    for command in (["bliptk", "models"], [sys.executable, "-m", "bliptk", "models"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "ViT-L/16" in result.stdout
    usage = subprocess.run(["bliptk", "caption"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr
