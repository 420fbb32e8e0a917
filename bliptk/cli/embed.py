"""``bliptk embed``: image-encoder embeddings of a folder's images, to an ``.npz`` file."""

from __future__ import annotations

import json

from .arguments import EXIT_OK, folder_images, load_model, model_arguments, one_line, out_arguments, output_file

HELP = "image-encoder embeddings of a folder, to an .npz file"


def add_arguments(parser) -> None:
    parser.add_argument("folder", metavar="FOLDER", help="a folder of images")
    out_arguments(parser, ".npz file to write (arrays: paths, embeddings, model, weights, pooling)")
    model_arguments(parser)
    parser.add_argument(
        "--pooling", choices=("cls", "mean"), default="cls", help="cls: the class token; mean: the patches' mean (default cls)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images encoded together (default 16)")
    parser.add_argument("--cache", default=None, help="folder to cache embeddings in (keyed by content, model and weights)")
    parser.add_argument("--recursive", action="store_true", help="include subfolders")


def run(args) -> int:
    import numpy as np

    with output_file(args, ".npz") as out:
        paths = folder_images(args)
        captioner = load_model(args)
        embeddings = captioner.embed(paths, pooling=args.pooling, batch_size=args.batch_size, cache=args.cache)
        arrays = {
            "paths": np.array([str(p) for p in paths]),
            "embeddings": embeddings,
            "model": captioner.name,
            "weights": json.dumps(captioner.weights.as_dict()),
            "pooling": args.pooling,
        }
        out.write(lambda path: np.savez(path, **arrays))
    print(f"{len(paths)} embeddings of size {embeddings.shape[1]} written to {one_line(str(out.path))}")
    return EXIT_OK
