"""Word-level summaries (bliptk.attribution.words), checked by hand on synthetic explanations."""

from __future__ import annotations

import numpy as np
import pytest

import bliptk
from bliptk.attribution.words import caption_words, concentration


def _explanation(tokens: list[str], maps: list[np.ndarray], image: str | None = None) -> bliptk.Explanation:
    return bliptk.Explanation(
        maps=np.array(maps, dtype=np.float32), tokens=tokens, token_ids=list(range(len(tokens))), method="gradcam", layer=6,
        prompt="a photography of", text="a photography of " + " ".join(tokens), image=image,
    )  # fmt: skip


def test_word_maps_average_each_occurrence_scaled_to_its_range():
    # Two images: "dog" once in each; the second's maps are 10x larger (its method's units), which
    # the scaling to [0, 1] removes; "skate ##board" is one word, its pieces' maps averaged.
    first = _explanation(["a", "dog"], [np.zeros((2, 2)), np.array([[0.0, 1.0], [2.0, 4.0]])], "one.jpg")
    second = _explanation(
        ["a", "Dog", "on", "skate", "##board"],
        [np.zeros((2, 2)), np.array([[40.0, 0.0], [0.0, 0.0]]), np.zeros((2, 2)), np.eye(2), np.array([[0.0, 0.0], [2.0, 0.0]])],
    )
    dog = bliptk.word_maps([first, second], "dog")
    by_hand = (np.array([[0.0, 0.25], [0.5, 1.0]]) + np.array([[1.0, 0.0], [0.0, 0.0]])) / 2
    np.testing.assert_allclose(dog.mean, by_hand)
    # Concentration: the share of mass in the top 10% of 4 patches, i.e. the top patch.
    assert [o.concentration for o in dog.occurrences] == [1.0, pytest.approx(1.0 / 1.75)]
    assert [o.explanation for o in dog.occurrences] == [1, 0] and dog.occurrences[1].image == "one.jpg"
    board = bliptk.word_maps([first, second], "skateboard")
    np.testing.assert_allclose(board.mean, np.array([[0.5, 0.0], [1.0, 0.5]]))
    assert board.occurrences[0].positions == (3, 4)
    assert "'dog': 2 occurrences in 2 explained captions (gradcam)" in str(dog)


def test_caption_words_join_word_pieces():
    assert caption_words(["a", "skate", "##board", "##er", "dog"]) == [("a", (0,)), ("skateboarder", (1, 2, 3)), ("dog", (4,))]


def test_concentration_of_an_even_map_is_its_top_share():
    assert concentration(np.ones((10, 10))) == pytest.approx(0.1)
    assert concentration(np.zeros((3, 3))) == 0.0


def test_a_word_no_caption_says_names_the_words_said_most():
    explained = [_explanation(["a", "dog"], [np.zeros((2, 2)), np.ones((2, 2))])]
    with pytest.raises(bliptk.InvalidOptionError, match="no caption of the 1 explanations says 'cat'; the words said most: a, dog"):
        bliptk.word_maps(explained, "cat")


def test_the_gallery_draws_the_mean_and_the_most_concentrated(tiny, photos):
    explained = bliptk.explain(tiny, photos[:3], "a dog on a bench")
    dog = bliptk.word_maps(explained, "dog")
    fig = bliptk.plot_word_gallery(dog, top=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "'dog': mean of 3" and len(titles) == 3
    assert titles[1].startswith(photos[0].name if dog.occurrences[0].explanation == 0 else "COCO_")
    assert "concentration" in titles[1]
