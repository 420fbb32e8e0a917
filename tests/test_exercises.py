"""The classroom exercises (notebooks/07_exercises.ipynb) in nbgrader's format: with the solutions
every graded test passes; cleared as nbgrader clears them, every graded test fails; a plausible
wrong answer fails its test; and nbgrader itself releases and grades the notebook."""

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).parent.parent
EXERCISES = ROOT / "notebooks" / "07_exercises.ipynb"

# A plausible wrong answer to each exercise, in place of its solution cell.
WRONG_ANSWERS = {
    "greedy": """
def greedy(decoder, tokenizer, features, prompt="a photography of", max_new_tokens=25):
    prompt_ids = tokenizer(prompt)
    state = decoder.start(features, len(prompt_ids) + max_new_tokens)
    input_ids, generated = torch.tensor([prompt_ids]), []
    for _ in range(max_new_tokens):  # never stops at [SEP]
        next_id = decoder(input_ids, state)[0, -1].argmax().item()
        generated.append(next_id)
        input_ids = torch.tensor([[next_id]])
    return generated
""",
    "sampling": """
def sampling_distribution(logits, temperature, k):  # forgets the temperature
    kth_best = np.sort(logits)[-k]
    scaled = np.where(logits < kth_best, -np.inf, logits.astype(np.float64))
    probabilities = np.exp(scaled - scaled.max())
    return probabilities / probabilities.sum()
""",
    "cache": """
def greedy_without_cache(decoder, tokenizer, features, prompt, new_tokens):
    ids = tokenizer(prompt)
    generated = []
    for _ in range(new_tokens):
        sequence = torch.tensor([ids + generated])
        logits = decoder(sequence, decoder.start(features, sequence.shape[1]))[0, -1].clone()
        logits[SEP] = -float("inf")
        generated.append(logits.argmax().item())
    return generated


def positions_fed(prompt_length, new_tokens):  # counts the last token as fed too
    return prompt_length + new_tokens, sum(prompt_length + step for step in range(new_tokens))
""",
    "beams": """
def two_beams(decoder, tokenizer, features, prompt, steps):  # two greedy captions, not a beam search
    prompt_ids = tokenizer(prompt)
    state = decoder.start(features, len(prompt_ids) + steps)
    logprobs = decoder(torch.tensor([prompt_ids]), state)[0, -1].log_softmax(dim=-1)
    logprobs[SEP] = -float("inf")
    first = logprobs.topk(2)
    beams, scores = [[t] for t in first.indices.tolist()], first.values
    state = state.select(torch.tensor([0, 0]))
    input_ids = first.indices[:, None]
    for _ in range(steps - 1):
        logprobs = decoder(input_ids, state)[:, -1].log_softmax(dim=-1)
        logprobs[:, SEP] = -float("inf")
        best = logprobs.max(dim=-1)
        beams = [beam + [token] for beam, token in zip(beams, best.indices.tolist())]
        scores = scores + best.values
        input_ids = best.indices[:, None]
    order = scores.argsort(descending=True).tolist()
    return [(beams[i], scores[i].item()) for i in order]
""",
    "video": """
def frame_times(duration, n):  # the start of each part, not its middle
    return [i * duration / n for i in range(n)]


def video_features(captioner, video, n):
    frames = bliptk.video_frames(video, n)
    return captioner.encode_image(list(frames)).mean(dim=0)
""",
    "nearest": """
def nearest_indices(query, vectors, k):  # the dot product: long vectors win
    return list(np.argsort(-(vectors @ query), kind="stable")[:k])
""",
    "entropy": """
def entropy_per_layer(cross_attention):  # the class token dropped, but not renormalised
    patches = cross_attention[..., 1:]
    return -(patches * patches.clamp_min(1e-12).log()).sum(dim=-1).mean(dim=(0, 2))
""",
    "logprob": """
def caption_logprob(decoder, tokenizer, features, prompt, token_ids):  # reads each token at its own position
    prompt_ids = tokenizer(prompt)
    ids = torch.tensor([prompt_ids + list(token_ids)])
    logprobs = decoder(ids, decoder.start(features, ids.shape[1]))[0].log_softmax(dim=-1)
    return float(sum(logprobs[len(prompt_ids) + i, token] for i, token in enumerate(token_ids)))
""",
    "gradcam": """
def gradcam_maps(captioner, features, prompt, token_ids, layer):  # the gradient of the logit, not of its log-probability
    prompt_ids = captioner.tokenizer(prompt)
    ids = torch.tensor([prompt_ids + list(token_ids)])
    maps = []
    with torch.enable_grad():
        out = captioner.model.text_decoder(input_ids=ids, encoder_hidden_states=features.clone().requires_grad_(), output_attentions=True)
        weights = out.cross_attentions[layer]
        for t, token in enumerate(token_ids):
            p = len(prompt_ids) - 1 + t
            (gradient,) = torch.autograd.grad(out.logits[0, p, token], weights, retain_graph=True)
            maps.append((weights[0, :, p] * gradient[0, :, p].clamp(min=0)).mean(dim=0)[1:].detach())
    grid = captioner.image_encoder.grid_size
    return torch.stack(maps).reshape(len(token_ids), grid, grid)
""",
}


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _graded(notebook) -> list[str]:
    return [_nbgrader(c)["grade_id"] for c in notebook.cells if _nbgrader(c).get("grade") and c.cell_type == "code"]


def _grade(notebook) -> dict[str, tuple[float, float, str | None]]:
    """Run a notebook (on the tiny net, kernel at the repository root); for each graded test cell,
    (score, points, the error it raised)."""
    from nbgrader.utils import determine_grade

    notebook = copy.deepcopy(notebook)
    NotebookClient(notebook, timeout=600, kernel_name="python3", allow_errors=True, resources={"metadata": {"path": str(ROOT)}}).execute()
    grades = {}
    for cell in notebook.cells:
        if _nbgrader(cell).get("grade") and cell.cell_type == "code":
            score, points = determine_grade(cell)
            error = next((output.ename for output in cell.outputs if output.output_type == "error"), None)
            grades[_nbgrader(cell)["grade_id"]] = (score, points, error)
    return grades


def _student_version(notebook):
    """What ``nbgrader generate_assignment`` hands out: solutions and hidden tests removed."""
    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions, LockCells

    notebook, resources = copy.deepcopy(notebook), {}
    for preprocessor in (LockCells(), ClearSolutions(), ClearOutput(), ClearHiddenTests()):
        notebook, resources = preprocessor.preprocess(notebook, resources)
    return notebook


@pytest.fixture(scope="module")
def exercises(monkeypatch_module):
    monkeypatch_module.setenv("BLIPTK_MODEL", "tiny")
    monkeypatch_module.setenv("MPLBACKEND", "Agg")
    return nbformat.read(EXERCISES, as_version=4)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_the_exercises_are_in_nbgraders_format(exercises):
    graded = _graded(exercises)
    assert len(graded) >= 7 and sum(_nbgrader(c).get("points", 0) for c in exercises.cells) == 23
    solutions = [c for c in exercises.cells if _nbgrader(c).get("solution")]
    assert {_nbgrader(c)["grade_id"] for c in solutions} == set(WRONG_ANSWERS)
    for cell in solutions:
        assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
    for cell in exercises.cells:
        if _nbgrader(cell).get("grade"):
            assert "### BEGIN HIDDEN TESTS" in cell.source and _nbgrader(cell)["locked"]
            assert "bliptk." in cell.source or "captioner." in cell.source  # the answer comes from bliptk


@pytest.mark.slow
@pytest.mark.notebooks
def test_with_the_solutions_every_graded_test_passes(exercises):
    grades = _grade(exercises)
    assert grades == {grade_id: (points, points, None) for grade_id, (_, points, _) in grades.items()}


@pytest.mark.slow
@pytest.mark.notebooks
def test_as_released_every_graded_test_fails(exercises):
    released = _student_version(exercises)
    text = json.dumps(released)
    assert "BEGIN SOLUTION" not in text and "HIDDEN TESTS" not in text and "raise NotImplementedError()" in text
    grades = _grade(released)
    assert set(grades) == set(_graded(exercises))
    assert all(score == 0 and error == "NotImplementedError" for score, _, error in grades.values()), grades


@pytest.mark.slow
@pytest.mark.notebooks
def test_a_plausible_wrong_answer_fails_its_test(exercises):
    wrong = copy.deepcopy(exercises)
    for cell in wrong.cells:
        if _nbgrader(cell).get("solution"):
            cell.source = WRONG_ANSWERS[_nbgrader(cell)["grade_id"]].strip()
    grades = _grade(wrong)
    assert all(score == 0 and error == "AssertionError" for score, _, error in grades.values()), grades


@pytest.mark.slow
@pytest.mark.notebooks
def test_nbgrader_releases_the_assignment_and_autogrades_submissions(exercises, tmp_path):
    """The teacher's workflow of notebooks/README.md: generate_assignment, then autograde a blank
    and a solved submission."""
    pytest.importorskip("nbgrader")
    course = tmp_path / "course"
    (course / "source" / "blip").mkdir(parents=True)
    shutil.copy(EXERCISES, course / "source" / "blip")
    (course / "nbgrader_config.py").write_text('c = get_config()\nc.CourseDirectory.course_id = "blip"\nc.Execute.timeout = 600\n')
    nbgrader = [sys.executable, "-m", "nbgrader"]
    run = lambda *args: subprocess.run([*nbgrader, *args], cwd=course, capture_output=True, text=True, timeout=600)  # noqa: E731
    released = run("generate_assignment", "blip")
    assert released.returncode == 0, released.stderr[-3000:]
    handout = (course / "release" / "blip" / "07_exercises.ipynb").read_text()
    assert "BEGIN SOLUTION" not in handout and "HIDDEN TESTS" not in handout and handout.count("raise NotImplementedError()") == 11
    for student, notebook in (("blank", course / "release" / "blip" / "07_exercises.ipynb"), ("solved", EXERCISES)):
        (course / "submitted" / student / "blip").mkdir(parents=True)
        shutil.copy(notebook, course / "submitted" / student / "blip" / "07_exercises.ipynb")
    graded = run("autograde", "blip")
    assert graded.returncode == 0, graded.stderr[-3000:]
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", course_id="blip") as gradebook:
        scores = {s.student.id: (s.score, s.max_score) for s in gradebook.assignment_submissions("blip")}
    assert scores == {"blank": (0, 23), "solved": (23, 23)}
