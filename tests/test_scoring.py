"""Scoring given captions, teacher-forced: equal to transformers' own forward pass, on both runtimes."""

import numpy as np
import pytest
import torch

import bliptk
from bliptk.core.scoring import CaptionScore
from bliptk.core.tokenizer import DEC_TOKEN_ID, SEP_TOKEN_ID

CAPTIONS = ["a woman cutting a cake", "a dog on a sofa in the sun", "cake"]


def _transformers_logprobs(captioner, image, caption: str, prompt: str):
    """transformers' teacher-forced log-softmax of each caption token (and [SEP]) after the prompt,
    the entropy of each step, and minus its summed loss (label smoothing off)."""
    tokenizer = captioner.tokenizer
    prompt_ids, caption_ids = tokenizer.encode(prompt)[1:], tokenizer.encode(caption)[1:]
    ids = [DEC_TOKEN_ID, *prompt_ids, *caption_ids, SEP_TOKEN_ID]
    input_ids = torch.tensor([ids])
    labels = torch.tensor([[-100] * (1 + len(prompt_ids)) + caption_ids + [SEP_TOKEN_ID]])
    model = captioner.model
    pixels = bliptk.model.image_encoder.TensorPreprocessor.of(captioner.preprocessor)(image)
    smoothing = model.text_decoder.label_smoothing
    model.text_decoder.label_smoothing = 0.0
    try:
        with torch.no_grad():
            output = model(pixel_values=pixels, input_ids=input_ids, labels=labels)
    finally:
        model.text_decoder.label_smoothing = smoothing
    logprobs = torch.log_softmax(output.logits[0, :-1].double(), dim=-1)
    scored = slice(len(prompt_ids), None)  # the predictions of the caption's tokens and [SEP]
    targets = torch.tensor(ids[1:])
    per_token = logprobs[scored].gather(-1, targets[scored, None])[:, 0]
    entropy = -(logprobs[scored].exp() * logprobs[scored]).sum(-1)
    return per_token.numpy(), entropy.numpy(), -float(output.loss) * len(per_token)


@pytest.mark.parametrize("prompt", ["a photography of", "", "the woman"])
def test_scores_equal_transformers_teacher_forced_pass(tiny, photos, prompt):
    scores = tiny.score(photos[0], CAPTIONS, prompt=prompt)
    assert [s.prompt for s in scores] == [prompt] * 3
    for caption, scored in zip(CAPTIONS, scores, strict=True):
        logprobs, entropy, total = _transformers_logprobs(tiny, photos[0], caption, prompt)
        assert scored.token_ids[-1] == SEP_TOKEN_ID and scored.tokens[-1] == "[SEP]" and scored.logprobs.shape == logprobs.shape
        np.testing.assert_allclose(scored.logprobs, logprobs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(scored.entropy, entropy, atol=1e-4, rtol=0)
        assert scored.total == pytest.approx(total, abs=1e-3) and scored.mean == pytest.approx(total / len(logprobs), abs=1e-4)


@pytest.mark.slow
def test_scores_equal_transformers_on_full_size_vit_b(vit_b, photos):
    scores = vit_b.score(photos[1], CAPTIONS[:2])
    for caption, scored in zip(CAPTIONS[:2], scores, strict=True):
        logprobs, entropy, total = _transformers_logprobs(vit_b, photos[1], caption, "a photography of")
        np.testing.assert_allclose(scored.logprobs, logprobs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(scored.entropy, entropy, atol=1e-4, rtol=0)
        assert scored.total == pytest.approx(total, abs=1e-3)


def test_a_greedy_caption_scores_its_own_logprobs_and_margins(sep_likely, photos):
    captioner = sep_likely(5.0)  # captions of different lengths, ending with [SEP]
    captions = captioner.caption(photos[:3], max_new_tokens=12)
    scores = captioner.score(photos[:3], [c.text for c in captions])  # the text starts with the prompt: scored after it
    for caption, scored in zip(captions, scores, strict=True):
        assert scored.token_ids[:-1] == caption.token_ids and scored.prompt == caption.prompt
        np.testing.assert_allclose(scored.logprobs[:-1], caption.logprobs, atol=1e-5, rtol=0)
        assert (scored.margin[:-1] >= 0).all()  # greedy chose each token: it was the best
        if caption.finished:
            assert scored.margin[-1] >= 0  # and [SEP] too, where the caption ended


def test_a_batch_equals_each_caption_alone_and_the_forms_of_a_call(tiny, photos):
    together = tiny.score(photos[:3], CAPTIONS, batch_size=2)
    for photo, caption, scored in zip(photos[:3], CAPTIONS, together, strict=True):
        alone = tiny.score(photo, caption)
        assert len(alone) == 1 and isinstance(alone[0], CaptionScore)
        np.testing.assert_allclose(scored.logprobs, alone[0].logprobs, atol=1e-5, rtol=0)
    each = tiny.score(photos[:3], "a dog")  # one caption for every image
    assert [s.text for s in each] == ["a dog"] * 3
    np.testing.assert_allclose(each[1].logprobs, tiny.score(photos[1], "a dog")[0].logprobs, atol=1e-5, rtol=0)
    assert tiny.score([], "a dog") == []


def test_a_caption_that_starts_with_the_prompt_is_scored_after_it(tiny, photos):
    with_prompt, without = tiny.score(photos[0], ["a photography of a dog", "a dog"])
    assert with_prompt.text == without.text == "a dog" and with_prompt.token_ids == without.token_ids
    np.testing.assert_allclose(with_prompt.logprobs, without.logprobs, atol=1e-6, rtol=0)
    words = tiny.score(photos[0], "a skateboarder jumps", prompt="")[0].words()
    assert [w for w, _, _ in words] == ["a", "skateboarder", "jumps", "[SEP]"]
    pieces = tiny.score(photos[0], "a skateboarder jumps", prompt="")[0]
    assert len(pieces.tokens) > len(words)  # "skateboarder" is more than one WordPiece: summed
    assert sum(lp for _, lp, _ in words) == pytest.approx(pieces.total, abs=1e-9)


def test_videos_are_scored_from_their_pooled_frames(tiny):
    video = bliptk.example_path("videos/bigbuckbunny.mp4")
    scored = tiny.score(video, "a rabbit in a field", num_frames=4)[0]
    assert scored.prompt == "a video of"
    features = tiny.encode_video(video, num_frames=4)
    from bliptk.core.scoring import score_features

    direct = score_features(tiny.decoder, tiny.tokenizer, features[None].float().numpy(), ["a rabbit in a field"], ["a video of"])[0]
    np.testing.assert_allclose(scored.logprobs, direct.logprobs, atol=1e-5, rtol=0)


def test_the_onnx_runtime_scores_as_torch(tiny, tiny_export, photos):
    runner = bliptk.load(tiny_export)
    ours, theirs = runner.score(photos[:2], CAPTIONS[:2]), tiny.score(photos[:2], CAPTIONS[:2])
    for onnx_score, torch_score in zip(ours, theirs, strict=True):
        assert onnx_score.token_ids == torch_score.token_ids
        np.testing.assert_allclose(onnx_score.logprobs, torch_score.logprobs, atol=1e-4, rtol=0)
        np.testing.assert_allclose(onnx_score.entropy, torch_score.entropy, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "captions, error, message",
    [
        ("   ", bliptk.InvalidOptionError, r"caption 0 is empty: give the text to score"),
        (
            "dog " * 600,
            bliptk.InvalidOptionError,
            r"caption 0 is 600 tokens; with \[DEC\], the prompt \(3 tokens\) and \[SEP\] that is 605 positions, and the decoder has 512",
        ),
        (3, bliptk.InvalidArgumentError, r"captions must be a string or a list of strings, got int"),
        ([None], bliptk.InvalidArgumentError, r"caption 0 must be a string, got NoneType"),
    ],
)
def test_bad_captions_are_refused_naming_them(tiny, photos, captions, error, message):
    with pytest.raises(error, match=message):
        tiny.score(photos[0], captions)


def test_bad_calls_are_refused(tiny, photos):
    with pytest.raises(bliptk.InvalidOptionError, match=r"2 captions for 3 images: give one caption per image"):
        tiny.score(photos[:3], ["a", "b"])
    with pytest.raises(bliptk.InvalidOptionError, match=r"unknown option\(s\) max_new_tokens for scoring; valid: num_frames"):
        tiny.score(photos[0], "a dog", max_new_tokens=3)
    with pytest.raises(bliptk.InvalidOptionError, match=r"a prompt must be a string or None, got int"):
        tiny.score(photos[0], "a dog", prompt=3)
    with pytest.warns(bliptk.PromptWarning, match=r"scored as \[UNK\]: '猫'"):
        assert tiny.score(photos[0], "a 猫 on a mat")[0].tokens[1] == "[UNK]"
