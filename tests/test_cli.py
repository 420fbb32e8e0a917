import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bliptk
from bliptk.cli.arguments import figure_title
from bliptk.cli.main import main


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


@pytest.mark.slow
def test_compile_captions_as_eager_and_records_it(tiny, photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    assert main(["caption", *map(str, photos[:2]), "--model", "tiny", "--compile", "--out", str(out), "--max-new-tokens", "5"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["token_ids"] for r in records] == [c.token_ids for c in tiny.caption(photos[:2], max_new_tokens=5)]
    assert all(r["weights"]["compiled"] is True for r in records)  # not reused as eager's
    assert main(["caption", *map(str, photos[:2]), "--model", "tiny", "--out", str(out), "--resume", "--max-new-tokens", "5"]) == 0
    assert len(out.read_text().splitlines()) == 4  # the eager run captioned both again


def test_a_missing_file_fails_alone(tiny, photos, capsys, tmp_path):
    missing = tmp_path / "gone.jpg"
    assert main(["caption", str(missing), str(photos[0]), "--model", "tiny", "--max-new-tokens", "3"]) == 1
    captured = capsys.readouterr()
    assert f"bliptk: error: {missing}: no such file" in captured.err
    assert captured.out.startswith(f"{photos[0]}: a photography of")


@pytest.mark.parametrize(
    "option, message",
    [
        (["--max-new-tokens", "-3"], "--max-new-tokens must be a non-negative integer"),
        (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
        (["--top-k", "0"], "--top-k must be an integer >= 1"),
        (["--top-p", "2"], r"--top-p must be in (0, 1]"),
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
    # The console script beside this Python, so that the suite runs as venv/bin/python -m pytest
    # without an activated venv (and never picks another install's bliptk from PATH).
    script = str(Path(sys.executable).parent / "bliptk")
    for command in ([script, "models"], [sys.executable, "-m", "bliptk", "models"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "ViT-L/16" in result.stdout
    usage = subprocess.run([script, "caption"], capture_output=True, text=True, timeout=60)
    assert (
        usage.returncode == 2 and usage.stderr == "bliptk: error: the following arguments are required: INPUT; see bliptk caption --help\n"
    )


def test_zero_inputs_exit_2_and_say_what_was_searched(photos, tmp_path, capsys):
    empty, nested, out = tmp_path / "empty", tmp_path / "nested", tmp_path / "x.jsonl"
    empty.mkdir()
    (nested / "day-1").mkdir(parents=True)
    for photo in photos:
        shutil.copy(photo, nested / "day-1")
    assert main(["caption", str(empty), "--model", "tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"bliptk: error: no files to caption: folder {empty} holds no image or video files\n"
    assert main(["caption", str(nested), "--model", "tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"bliptk: error: no files to caption: folder {nested} holds no image or video files. "
        "Subfolders hold 3 image or video files: pass --recursive to caption them\n"
    )
    assert main(["caption", str(tmp_path / "*.png"), "--model", "tiny"]) == 2
    assert f"pattern '{tmp_path / '*.png'}' matches no files" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(bliptk.NoInputsError, match="pass recursive=True to caption them"):
        next(bliptk.load("tiny").caption_files(nested))
    assert main(["caption", str(nested), "--model", "tiny", "--recursive", "--max-new-tokens", "2"]) == 0


def test_without_weights_the_cli_names_its_own_fixes(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert main(["caption", str(photos[0]), "--model", "ViT-B/16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bliptk: error: checkpoint 'Salesforce/blip-image-captioning-base' is not in the Hugging Face cache")
    assert "--random-weights" in err and "--model FOLDER" in err and "HF_HUB_OFFLINE=1" in err and "pretrained=False" not in err


def test_models_lists_the_test_net(capsys):
    assert main(["models"]) == 0
    [tiny_row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny ")]
    assert "(test net: random weights only)" in tiny_row and "1,129,324" in tiny_row


def test_info_needs_no_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert main(["info", "--model", "ViT-B/16"]) == 0
    assert "total parameters: 223,971,644" in capsys.readouterr().out


def test_ctrl_c_while_the_model_loads_exits_130_with_one_line(photos, capsys, monkeypatch):
    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("bliptk.model.loading.load", interrupted_load)
    assert main(["caption", str(photos[0]), "--model", "tiny"]) == 130
    assert capsys.readouterr().err == "bliptk: interrupted\n"


def test_random_weights_say_so_once_on_stderr(photos, capsys):
    assert main(["caption", *map(str, photos), "--model", "tiny", "--max-new-tokens", "2", "--batch-size", "1"]) == 0
    err = capsys.readouterr().err
    assert err == (
        "bliptk: warning: tiny has random weights (seed 0): its captions are random words and its embeddings carry "
        "no meaning. Load pretrained weights for real results.\n"
    )


def test_decoding_flags_are_the_fields_of_decoding_options():
    from dataclasses import fields

    from bliptk.cli.main import _parser

    caption = _parser()._subparsers._group_actions[0].choices["caption"]
    flags = {action.dest: action for action in caption._actions}
    for option in fields(bliptk.DecodingOptions):
        if option.metadata.get("per_input", True):
            assert flags[option.name].option_strings == [f"--{option.name.replace('_', '-')}"]
            assert flags[option.name].default == option.default and option.metadata["help"] in flags[option.name].help
        else:
            assert option.name not in flags  # a batch job writes one caption per input


def _subcommands():
    from bliptk.cli.main import _parser

    [choices] = [action.choices for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    return choices


def test_every_option_of_every_command_says_what_it_takes():
    for name, command in _subcommands().items():
        for action in command._actions:
            assert action.help, f"bliptk {name} {action.option_strings or action.dest} has no help"


def test_each_command_describes_only_its_own_options():
    helps = {name: command.format_help() for name, command in _subcommands().items()}
    assert [name for name, text in helps.items() if "ONNX export folder" in text] == [
        "caption",
        "explain",
        "score",
        "search",
    ]  # those that run on an export (explain: by its black-box methods)
    assert "{float32,bfloat16,float16,int8}" in helps["caption"] and "its quantized graphs" in helps["caption"]
    assert "[--dtype" not in helps["export"] and "runs them with --dtype int8" in helps["export"]  # exports are of float32 models
    assert "--num-frames NUM_FRAMES, --frames NUM_FRAMES" in helps["caption"] and "{mean,concat}" in helps["caption"]
    assert "--num-frames" not in helps["attention"] and "--temperature" not in helps["attention"]


def test_map_prints_rounded_scores(tiny, photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder)
    assert main(["map", str(folder), "--model", "tiny", "--method", "pca", "--clusters", "2", "--out", str(tmp_path / "map.png")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(r"k=2, silhouette=-?\d\.\d{3}", first), first


def test_usage_errors_are_one_line_and_a_dashed_file_gets_a_hint(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(photos[0], tmp_path / "-dash.jpg")
    with pytest.raises(SystemExit) as exit:
        main(["caption", "-dash.jpg", "--model", "tiny"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == (
        "bliptk: error: the following arguments are required: INPUT (-dash.jpg is a file: write ./-dash.jpg, or put it after -- "
        "at the end of the command); see bliptk caption --help\n"
    )
    assert main(["caption", "--model", "tiny", "--max-new-tokens", "2", "--", "-dash.jpg"]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / '-dash.jpg'}: a photography of")


def test_a_timeline_of_each_video_and_each_bad_one_reported(tiny, tmp_path, capsys):
    from helpers import make_video

    make_video(tmp_path / "a-good.mp4", frames=20)
    (tmp_path / "b-empty.mp4").write_bytes(b"")
    (tmp_path / "c-noise.mp4").write_bytes(bytes(range(256)) * 40)
    assert main(["caption", str(tmp_path), "--model", "tiny", "--segments", "2", "--num-frames", "2", "--max-new-tokens", "3"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{tmp_path / 'a-good.mp4'}:\n     0.00 -    1.00 s  a video of")
    errors = [line for line in captured.err.splitlines() if line.startswith("bliptk: error:")]
    assert errors == [
        f"bliptk: error: {tmp_path / 'b-empty.mp4'}: empty file (0 bytes)",
        f"bliptk: error: {tmp_path / 'c-noise.mp4'}: not a video PyAV can read, or corrupt or truncated "
        + errors[1].split("corrupt or truncated ", 1)[1],
    ]


def test_a_prompt_outside_the_vocabulary_is_warned_about_once(photos, capsys):
    assert main(["caption", str(photos[0]), str(photos[1]), "--model", "tiny", "--prompt", "a 猫", "--max-new-tokens", "2"]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "outside BLIP's vocabulary" in line]
    assert warned == [
        "bliptk: warning: prompt 'a 猫' has text outside BLIP's vocabulary, which the tokenizer turns into [UNK] and the caption loses: '猫'"
    ]


def test_explain_draws_the_apis_explanation_and_records_how(tiny, photos, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grid.png"
    arguments = ["explain", str(photos[0]), "--model", "tiny", "--method", "relevance", "--max-new-tokens", "4", "--out", str(out)]
    assert main(arguments) == 0
    expected = bliptk.explain(tiny, photos[0], max_new_tokens=4, method="relevance")
    assert capsys.readouterr().out == f"{photos[0]}: {expected.text}\nwrote {out}\n"
    made = json.loads(Image.open(out).info["Description"])
    assert made["method"] == "relevance" and made["weights"] == tiny.weights.as_dict() and made["caption"] == expected.text
    assert main(arguments) == 2  # an existing output is replaced only with --overwrite
    assert "exists" in capsys.readouterr().err
    teacher_forced = ["explain", str(photos[0]), "--model", "tiny", "--caption", "a red bus", "--layer", "0", "--raw", "--out", str(out)]
    assert main([*teacher_forced, "--overwrite"]) == 0
    assert json.loads(Image.open(out).info["Description"])["layer"] == 0
    assert capsys.readouterr().out.startswith(f"{photos[0]}: a photography of a red bus\n")


@pytest.mark.parametrize(
    "option, message",
    [
        (
            ["--method", "relevance", "--layer", "1"],
            "relevance uses all decoder layers: drop --layer (it applies to attention and gradcam)",
        ),
        (["--layer", "5"], "--layer must be an integer in [-2, 1] (the decoder has 2 layers), got 5"),
        (["--method", "lrp"], "argument --method: invalid choice: 'lrp'"),
        (["--method", "integrated_gradients", "--ig-steps", "0"], "--ig-steps must be an integer >= 1, got 0"),
        (["--ig-steps", "8"], "--ig-steps applies to the integrated_gradients method, not gradcam: add --method integrated_gradients"),
        (["--columns", "0"], "--columns must be an integer >= 1, got 0"),
    ],
)
def test_explain_mistakes_exit_2_in_one_line(photos, tmp_path, capsys, option, message):
    try:
        code = main(["explain", str(photos[0]), "--model", "tiny", "--out", str(tmp_path / "x.png"), *option])
    except SystemExit as usage:  # argparse's own checks
        code = usage.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.png").exists()


def test_figures_record_how_they_were_made(tiny, photos, tmp_path, capsys):
    from PIL import Image

    assert main(["attention", str(photos[0]), "--model", "tiny", "--max-new-tokens", "3", "--out", str(tmp_path / "a.png")]) == 0
    made = json.loads(Image.open(tmp_path / "a.png").info["Description"])
    assert made["model"] == "tiny" and made["options"]["max_new_tokens"] == 3 and made["layer"] == [-1]


def test_finetune_trains_and_its_output_captions(photos, tmp_path, capsys):
    pytest.importorskip("peft")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"image": p.name, "caption": f"a photo number {i}"}) + "\n" for i, p in enumerate(photos)))
    for photo in photos:
        (tmp_path / photo.name).write_bytes(photo.read_bytes())
    run = tmp_path / "run"
    assert main(["finetune", "--model", "tiny", "--train", str(train), "--out", str(run), "--max-steps", "2", "--lora", "4"]) == 0
    assert "fine-tuned 2 steps" in capsys.readouterr().out
    assert main(["caption", str(photos[0]), "--model", str(run), "--max-new-tokens", "3"]) == 0
    assert main(["finetune", "--model", "tiny", "--train", str(train), "--out", str(run)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["finetune", "--model", "tiny", "--train", str(train), "--out", str(tmp_path / "other"), "--save-adapter"]) == 2
    assert "--save-adapter go with --lora RANK" in capsys.readouterr().err


def test_an_explanation_figure_says_the_very_tokens_explained(tiny, photos, tmp_path, capsys):
    """[UNK] included (issue 31: the metadata's caption dropped them, so it did not reproduce the figure)."""
    from PIL import Image

    out = tmp_path / "why.png"
    assert main(["explain", str(photos[0]), "--model", "tiny", "--caption", "a 猫 on a bench", "--out", str(out)]) == 0
    assert "bliptk: warning: caption 'a 猫 on a bench' has text outside BLIP's vocabulary, explained as [UNK]" in capsys.readouterr().err
    made = json.loads(Image.open(out).info["Description"])
    assert made["caption"] == "a 猫 on a bench" and made["tokens"] == ["a", "[UNK]", "on", "a", "bench"]
    assert made["token_ids"] == tiny.tokenizer.encode("a 猫 on a bench")[1:]
    assert bliptk.explain(tiny, photos[0], made["caption"]).token_ids == made["token_ids"]  # the figure can be made again


def test_every_figure_the_command_line_writes_says_what_and_how(tiny, photos, tmp_path, monkeypatch):
    """A title line: the caption, what it shows, the model, its weights (random ones said plainly)."""
    from matplotlib.figure import Figure

    titles = []
    save = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *a, **k: titles.append(figure.get_suptitle()) or save(figure, *a, **k))
    image = str(photos[0])
    assert main(["explain", image, "--model", "tiny", "--caption", "a dog", "--contrast", "dog=cat", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["attention", image, "--model", "tiny", "--max-new-tokens", "2", "--out", str(tmp_path / "b.png")]) == 0
    random = "tiny · RANDOM WEIGHTS (seed 0): not a trained model, its words mean nothing"
    assert titles[0] == f"a photography of a dog\nGrad-CAM, layer 1, 'dog' against 'cat' · {random}"
    assert titles[1].endswith(f"\ncross-attention, layer -1, heads mean · {random}") and titles[1].startswith("a photography of ")
    made = {"model": "ViT-B/16", "weights": {"source": "pretrained", "dtype": "bfloat16"}}
    assert figure_title(made, "UMAP") == "UMAP · ViT-B/16 · pretrained weights, bfloat16"


def test_a_path_with_a_newline_prints_on_one_line(photos, tmp_path, capsys):
    odd = tmp_path / "two\nlines.jpg"
    shutil.copy(photos[0], odd)
    out = tmp_path / "why\nnot.png"
    assert main(["explain", str(odd), "--model", "tiny", "--max-new-tokens", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("\n") == 2 and "two\\nlines.jpg: a photography of" in printed and "why\\nnot.png" in printed


def test_negative_numbers_are_values_for_their_options_to_check(photos, tmp_path, capsys):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"image": str(photos[0]), "caption": "a dog"}) + "\n")
    for flag, value, message in [
        ("--lr", "-1e-3", "--lr must be a finite non-negative number, got -0.001"),
        ("--weight-decay", "-.5", "--weight-decay must be a finite non-negative number, got -0.5"),
        ("--label-smoothing", "-1E-2", "--label-smoothing must be a finite non-negative number, got -0.01"),
        ("--lr", "inf", "--lr must be a finite non-negative number, got inf"),
        ("--lr", "-inf", "--lr must be a finite non-negative number, got -inf"),
    ]:
        assert main(["finetune", "--model", "tiny", "--train", str(train), "--out", str(tmp_path / "run"), flag, value]) == 2
        assert capsys.readouterr().err == f"bliptk: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_score_prints_each_word_and_the_totals(tiny, photos, capsys):
    assert main(["score", str(photos[0]), "a woman cutting a cake", "a skateboarder", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    first, second = tiny.score(photos[0], ["a woman cutting a cake", "a skateboarder"])
    assert f"{photos[0]}: 'a woman cutting a cake' (after 'a photography of')" in out
    assert f"  total {first.total:.3f}, mean {first.mean:.3f} per token" in out
    word, logprob, margin = second.words()[1]
    assert word == "skateboarder" and f"  {word:<16} {logprob:8.3f}" in out  # WordPieces joined into the word
    assert out.count("[SEP]") == 2


def test_score_of_references_lists_the_least_likely(tiny, photos, tmp_path, capsys):
    records = tmp_path / "records.jsonl"
    list(tiny.caption_files(photos[:2], records, max_new_tokens=3))
    ids = [int(p.stem.rsplit("_", 1)[-1]) for p in photos[:2]]
    references = {str(ids[0]): ["a woman with a cake", "people at a party"], str(ids[1]): ["a giraffe"]}
    (tmp_path / "refs.json").write_text(json.dumps(references))
    assert main(["score", str(records), "--references", str(tmp_path / "refs.json"), "--model", "tiny", "--least", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    means = sorted(
        (s.mean, str(photos[0]), c) for c, s in zip(references[str(ids[0])], tiny.score(photos[0], references[str(ids[0])]), strict=True)
    )
    means = sorted(means + [(tiny.score(photos[1], "a giraffe")[0].mean, str(photos[1]), "a giraffe")])
    assert out[0] == "3 reference captions of 2 images scored; the 2 least likely (mean logprob per token):"
    assert out[1:] == [f"  {mean:7.3f}  {path}: {caption}" for mean, path, caption in means[:2]]


def test_search_prints_the_hits_of_each_query(tiny, photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder)
    assert (
        main(["search", str(folder), "a cake", "an elephant", "--model", "tiny", "--top-k", "2", "--cache", str(tmp_path / "f.npz")]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    hits = bliptk.search(tiny, folder, "an elephant", top_k=2)
    assert lines[0] == "a cake:" and lines[3] == "an elephant:" and len(lines) == 6
    assert lines[4:] == [f"  {h.score:8.3f}  {h.path}" for h in hits] and (tmp_path / "f.npz").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["score", "{photo}", "", "--model", "tiny"], "bliptk: error: the caption is empty: give the text to score"),
        (["score", "{photo}", "--model", "tiny"], "bliptk: error: give the captions to score after the image"),
        (["score", "gone.jpg", "a dog", "--model", "tiny"], "bliptk: error: gone.jpg: no such file"),
        (
            ["score", "{photo}", "dog " * 600, "--model", "tiny"],
            "bliptk: error: the caption is 600 tokens; with [DEC], the prompt (3 tokens)",
        ),
        (["search", "{folder}", "", "--model", "tiny"], "bliptk: error: the query is empty"),
        (["search", "{folder}", "a dog", "--top-k", "0", "--model", "tiny"], "bliptk: error: --top-k must be an integer >= 1, got 0"),
    ],
)
def test_score_and_search_refuse_bad_input_before_loading(photos, argv, message, monkeypatch, capsys):
    monkeypatch.setattr("bliptk.captioning.runtimes.load", lambda *a, **k: pytest.fail("loaded a model"))
    argv = [a.format(photo=photos[0], folder=photos[0].parent) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_search_refuses_an_unwritable_cache_before_loading(photos, monkeypatch, capsys):
    monkeypatch.setattr("bliptk.captioning.runtimes.load", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["search", str(photos[0].parent), "a dog", "--model", "tiny", "--cache", "/proc/c.npz"]) == 2
    assert capsys.readouterr().err.startswith("bliptk: error: /proc/c.npz: cannot write there")


class _Loaded(Exception):
    """What the model loader raises in a test that must not load a model."""


def test_a_resumed_job_with_nothing_to_do_stops_before_loading_the_model(tiny_checkpoint, photos, tmp_path, capsys, monkeypatch):
    from bliptk.model.parity import save_checkpoint

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, checkpoint)
    out = tmp_path / "captions.jsonl"
    job = ["caption", *map(str, photos[:2]), "--model", str(checkpoint), "--out", str(out), "--max-new-tokens", "3"]
    assert main(job) == 0
    written = out.read_bytes()
    capsys.readouterr()

    def refuse(*args, **kwargs):
        raise _Loaded

    monkeypatch.setattr("bliptk.cli.caption.load_model", refuse)
    assert main([*job, "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"bliptk: nothing to do: all 2 inputs have their records in {out} (the same model, weights and options;" in err
    assert f"bliptk: 0 captioned, 0 failed, 2 already done (of 2); records in {out}" in err
    assert out.read_bytes() == written
    # Other options, another input, or other weights in the same folder (the old ones kept beside them
    # in a file loading does not read): the model loads (here, refuses to).
    for again in ([*job[:-1], "4"], [*job[:1], str(photos[2]), *job[1:]], "other weights"):
        if again == "other weights":
            shutil.copy(checkpoint / "model.safetensors", checkpoint / "model_backup.safetensors")
            save_checkpoint(bliptk.load("tiny", weights_seed=1), checkpoint)
            again = job
        assert main([*again, "--resume"]) != 0
        assert "internal error: _Loaded" in capsys.readouterr().err
    # A torn weights file: loading says what is wrong with it (not an internal error of the shortcut).
    monkeypatch.undo()
    (checkpoint / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:1000])
    assert main([*job, "--resume"]) == 2
    assert "internal error" not in capsys.readouterr().err


def test_a_figure_the_command_line_writes_suits_a_page(photos, tmp_path):
    """Twenty words over a photo: at most 1280 px on a side and a few hundred KB (a full-colour PNG
    at 100 dpi was 2-4 MB), its provenance still in its metadata."""
    from PIL import Image

    out = tmp_path / "why.png"
    assert main(["explain", str(photos[0]), "--model", "tiny", "--caption", " ".join(["a dog on a beach"] * 5), "--out", str(out)]) == 0
    picture = Image.open(out)
    assert max(picture.size) <= 1280 and out.stat().st_size < 400_000
    assert json.loads(picture.info["Description"])["model"] == "tiny"
