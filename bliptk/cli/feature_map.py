"""``bliptk map``: a feature-space map (UMAP, t-SNE, PCA) of a folder's images, as a PNG, coloured
by labels or clusters."""

from __future__ import annotations

import csv
from pathlib import Path

from ..core.errors import InputError, InvalidOptionError, first_line
from .arguments import EXIT_OK, figure_output, folder_images, load_model, model_arguments, one_line, out_arguments, save_figure

HELP = "feature-space map of a folder of images, as a PNG"


def add_arguments(parser) -> None:
    parser.add_argument("folder", metavar="FOLDER", help="a folder of images")
    out_arguments(parser, "PNG file to write")
    model_arguments(parser)
    parser.add_argument("--method", choices=("umap", "tsne", "pca"), default="umap", help="the projection to 2-D (default umap)")
    parser.add_argument("--clusters", default=None, help="colour by K clusters: an integer, or auto to choose K")
    parser.add_argument("--labels", default=None, help="CSV with columns file,label to colour by")
    parser.add_argument("--callouts", action="store_true", help="write each label next to its point")
    parser.add_argument(
        "--pooling", choices=("cls", "mean"), default="cls", help="cls: the class token; mean: the patches' mean (default cls)"
    )
    parser.add_argument("--cache", default=None, help="folder to cache embeddings in")
    parser.add_argument("--seed", type=int, default=0, help="projection seed (default 0)")
    parser.add_argument("--recursive", action="store_true", help="include subfolders")


def run(args) -> int:
    from ..analysis.feature_space import CLUSTER_PALETTE, cluster, plot_feature_space

    with figure_output(args) as out:
        paths = folder_images(args)
        if (
            args.clusters is not None
            and args.clusters != "auto"
            and not (args.clusters.isdigit() and 1 <= int(args.clusters) <= len(paths))
        ):
            raise InvalidOptionError(
                f"--clusters must be auto or an integer in [1, {len(paths)}] (the folder's images), got {args.clusters!r}"
            )
        labels = [_label(_read_labels(args.labels), path) for path in paths] if args.labels else None
        captioner = load_model(args)
        embeddings = captioner.embed(paths, pooling=args.pooling, cache=args.cache)
        if args.clusters is not None:
            result = cluster(embeddings, k=None if args.clusters == "auto" else int(args.clusters), true_labels=labels)
            scores = f"k={result.k}, silhouette={result.silhouette:.3f}" if result.silhouette is not None else f"k={result.k}"
            if labels is not None:
                scores += f", adjusted Rand index={result.adjusted_rand_index:.3f}, purity={result.purity:.3f}"
            print(scores)
            labels = [f"cluster {label}" for label in result.labels]
        palette = CLUSTER_PALETTE if args.clusters is not None else "tab10"  # clusters are no classes: their own colours
        figure = plot_feature_space(
            embeddings, images=paths, labels=labels, method=args.method, random_state=args.seed, callouts=args.callouts, palette=palette
        )
        made = {**captioner.provenance(), "folder": args.folder, "method": args.method, "pooling": args.pooling, "seed": args.seed}
        what = f"{args.method.upper()} of {len(paths)} images' {args.pooling} embeddings"
        save_figure(out, figure, {**made, "clusters": args.clusters, "labels": args.labels}, what)
    print(f"{len(paths)} images mapped to {one_line(str(out.path))}")
    return EXIT_OK


def _read_labels(path: str) -> dict[str, str]:
    """``{file: label}`` of a labels CSV (columns ``file`` and ``label``).

    Raises:
        InputError: The file cannot be read, or lacks the columns.
    """
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as problem:
        raise InputError(path, f"cannot be read as a labels CSV ({first_line(problem)}); give a CSV with columns file,label") from None
    if rows and not {"file", "label"} <= set(rows[0]):
        raise InputError(path, f"a labels CSV needs the columns file and label, got {', '.join(rows[0])}")
    return {row["file"]: row["label"] for row in rows}


def _label(labels: dict[str, str], path: Path) -> str:
    return labels.get(path.name, labels.get(str(path), "?"))
