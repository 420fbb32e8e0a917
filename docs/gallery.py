"""The figures of the documentation site: one of each figure bliptk draws, with the call that draws it.

Each [`Figure`][] is a name, a title and the code a user writes; ``docs/hooks.py`` runs the code
when the site is built (on ViT-B/16 with random weights, or the tiny test net where a full-size
run would take minutes), saves the figure as ``figures/NAME.png`` with a line at its foot saying
which weights drew it, and writes the gallery page from this list. Guides show the same files, so a
guide's picture is its code's. The PNGs are kept in ``.bliptk-cache/docs/`` under a key of the code,
the weights and bliptk's source, so a second build redraws only what changed.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bliptk-cache" / "docs" / "figures"

SETUP = """\
import bliptk

captioner = bliptk.load("ViT-B/16")
photo = bliptk.example_path("images/woman-with-cake.jpg")
caption = captioner.caption(photo, max_new_tokens=8, return_attention=True)
"""
"""What every figure's code starts from (the gallery page shows it once)."""


@dataclass(frozen=True)
class Figure:
    """One figure of the site.

    Attributes:
        name: Its file, ``figures/NAME.png``.
        title: What it shows, in a few words.
        code: The call that draws it, after [`SETUP`][]; its last line is the figure.
        guide: The guide that explains it (a path under ``docs/``).
        model: What draws it when the site is built: ``"ViT-B/16"`` (random weights) or ``"tiny"``.
    """

    name: str
    title: str
    code: str
    guide: str
    model: str = "ViT-B/16"


FIGURES = [
    Figure(
        "attention-overlays",
        "Cross-attention of each word, over the photo",
        "bliptk.plot_attention_overlays(photo, caption)",
        "guide/attention.md",
    ),
    Figure(
        "attention-maps", "The raw cross-attention maps, one panel per token", "bliptk.plot_attention_maps(caption)", "guide/attention.md"
    ),
    Figure(
        "gradcam",
        "Why each word: Grad-CAM over the photo",
        """\
explanation = bliptk.explain(captioner, photo, caption, method="gradcam")
bliptk.plot_attention_overlays(photo, explanation)""",
        "guide/explaining.md",
    ),
    Figure(
        "faithfulness",
        "How faithful a map is: deleting its most important patches first",
        """\
explanation = bliptk.explain(captioner, photo, caption, method="gradcam")
result = bliptk.faithfulness(captioner, photo, explanation, mode="deletion", steps=8)
bliptk.plot_faithfulness([result])""",
        "guide/explaining.md",
        model="tiny",
    ),
    Figure(
        "word-gallery",
        "One word across several photos, most concentrated first",
        """\
photos = sorted(bliptk.example_path("images/feature-space").glob("*.jpg"))[:8]
explanations = bliptk.explain(captioner, photos, method="gradcam", max_new_tokens=8)
word = explanations[0].tokens[0]  # a word of the first caption (with random weights, any word)
bliptk.plot_word_gallery(bliptk.word_maps(explanations, word))""",
        "guide/explaining.md",
    ),
    Figure(
        "sanity-check",
        "The sanity check: maps as the layers are randomised, top down",
        """\
check = bliptk.sanity_check(captioner, photo, caption, method=["gradcam", "attention"], seeds=[0])
check.plot()""",
        "guide/explaining.md",
        model="tiny",
    ),
    Figure(
        "feature-space",
        "The feature space of labelled photos (UMAP)",
        """\
folder = bliptk.example_path("images/feature-space")
with open(f"{folder}/labels.csv", newline="") as file:
    rows = list(csv.DictReader(file))
paths, labels = [f"{folder}/{row['file']}" for row in rows], [row["label"] for row in rows]
embeddings = captioner.embed(paths)
bliptk.plot_feature_space(embeddings, images=paths, labels=labels, callouts=True, random_state=37)""",
        "guide/feature-space.md",
    ),
    Figure(
        "video-frames",
        "A video's uniformly spaced frames, as they are captioned",
        'bliptk.plot_video_frames(bliptk.video_frames(bliptk.example_path("videos/bigbuckbunny.mp4"), num_frames=8))',
        "guide/video.md",
    ),
    Figure(
        "loss-curve",
        "A fine-tuning run's loss curve",
        """\
folder = bliptk.example_path("images/coco-karpathy-test")
with open(f"{folder}/references.json") as file:
    pairs = [(f"{folder}/{entry['file_name']}", text) for entry in json.load(file) for text in entry["captions"]]
result = bliptk.finetune(captioner, pairs[:30], val=pairs[30:], out=run_folder, epochs=2, batch_size=8, lr=1e-3)
result.plot()""",
        "guide/finetuning.md",
        model="tiny",
    ),
]
"""The site's figures, in the gallery's order."""

WEIGHTS_LINE = {
    "ViT-B/16": "Drawn on ViT-B/16 with random weights (seed 0) when this site was built: its words and maps are random, the figure's form is real.",
    "tiny": "Drawn on the tiny random test net (6x6 patches) when this site was built: its words and maps are random, the figure's form is real.",
}
"""The line at the foot of each figure, by the model that drew it."""


def cache_key(figure: Figure, source_hash: str) -> str:
    """What a figure's PNG depends on: its code, the model, and bliptk's source."""
    return hashlib.sha256("\n".join([SETUP, figure.code, figure.model, source_hash]).encode()).hexdigest()[:16]


def source_hash() -> str:
    """A hash of bliptk's Python source: a change to any module redraws every figure."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "bliptk").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def draw(figure: Figure, captioners: dict, scratch: Path) -> bytes:
    """Run a figure's code (after [`SETUP`][], on the captioner of its model) and return its PNG,
    labelled at its foot with the weights that drew it."""
    import csv
    import json

    import matplotlib

    matplotlib.use("Agg")
    import bliptk
    from bliptk.core.figures import compact_png

    if figure.model not in captioners:
        captioners[figure.model] = bliptk.load(figure.model, pretrained=False)
    photo = bliptk.example_path("images/woman-with-cake.jpg")
    captioner = captioners[figure.model]
    namespace = {"bliptk": bliptk, "os": os, "csv": csv, "json": json, "captioner": captioner, "photo": photo}
    namespace["run_folder"] = str(scratch / figure.name)
    *statements, last = figure.code.strip().split("\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bliptk.RandomWeightsWarning)  # the figure's foot says it
        namespace["caption"] = captioner.caption(photo, max_new_tokens=8, return_attention=True)
        exec("\n".join(statements), namespace)  # noqa: S102 -- the site's own code, from this file
        drawn = eval(last, namespace)  # noqa: S307
    fig = getattr(drawn, "figure", drawn)
    width = fig.get_size_inches()[0]
    # Below the figure's own area (bbox_inches="tight" takes it in), so that it covers nothing.
    fig.text(0.005, -0.01, textwrap.fill(WEIGHTS_LINE[figure.model], int(width * 16)), fontsize=7, color="0.35", va="top")
    png = compact_png(fig, dpi=90, bbox_inches="tight", pad_inches=0.12)
    matplotlib.pyplot.close("all")
    return png


def figure_pngs(scratch: Path) -> dict[str, bytes]:
    """Every figure's PNG by name: from the cache where its key matches, else drawn now (and cached)."""
    source = source_hash()
    captioners: dict = {}
    pngs = {}
    CACHE.mkdir(parents=True, exist_ok=True)
    for figure in FIGURES:
        cached = CACHE / f"{figure.name}-{cache_key(figure, source)}.png"
        if not cached.is_file():
            partial = cached.with_suffix(".partial")
            partial.write_bytes(draw(figure, captioners, scratch))
            partial.replace(cached)
            for older in CACHE.glob(f"{figure.name}-*.png"):  # drawn from another source: never read again
                if older != cached:
                    older.unlink(missing_ok=True)
        pngs[figure.name] = cached.read_bytes()
    return pngs


def gallery_markdown() -> str:
    """The gallery page: the setup once, then each figure's title, code and picture."""
    parts = [
        "# Gallery",
        "",
        "One of each figure bliptk draws, with the call that draws it. Every call starts from:",
        "",
        "```python",
        SETUP.rstrip(),
        "```",
        "",
        "The site's build runs these calls: on ViT-B/16 **with random weights** (this machine has no Hub access), or on",
        "the tiny random test net where a full-size run takes minutes, as each figure's foot says. The words and maps",
        'are therefore random; with the real weights (`bliptk.load("ViT-B/16")` downloads them) the same calls draw',
        "the real thing. Each figure links to the guide that explains it.",
        "",
    ]
    for figure in FIGURES:
        parts += [
            f"## {figure.title}",
            "",
            "```python",
            figure.code,
            "```",
            "",
            f"![{figure.title}](figures/{figure.name}.png)",
            "",
            f"More: [{Path(figure.guide).stem.replace('-', ' ')}]({figure.guide}).",
            "",
        ]
    return "\n".join(parts)
