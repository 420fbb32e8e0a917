"""``bliptk search``: the images of a folder ranked by how likely the model finds a query as
their caption."""

from __future__ import annotations

from ..core.errors import InvalidOptionError
from ..store.outputs import claim
from .arguments import EXIT_OK, check_captions, load_model, model_arguments, one_line

HELP = "rank a folder's images by how likely a query is as their caption"


def add_arguments(parser) -> None:
    parser.add_argument("images", metavar="FOLDER", help="a folder, a glob pattern or an image")
    parser.add_argument("queries", metavar="QUERY", nargs="+", help="what to look for, as a caption (quote each)")
    model_arguments(parser, runtimes=("torch", "onnx"))
    parser.add_argument("--top-k", type=int, default=10, help="hits to list per query (default 10)")
    parser.add_argument("--prompt", default=None, help='what the query is conditioned on (default "a photography of")')
    parser.add_argument("--cache", default=None, help=".npz file to keep image features in, reused by later searches")
    parser.add_argument("--batch-size", type=int, default=16, help="images encoded together (default 16)")
    parser.add_argument("--recursive", action="store_true", help="include subfolders")


def run(args) -> int:
    from ..captioning.folder import expand_inputs
    from ..captioning.search import FeatureCache, search

    if args.top_k < 1:
        raise InvalidOptionError(f"--top-k must be an integer >= 1, got {args.top_k}")
    check_captions(args, args.queries, "query")
    expand_inputs([args.images], args.recursive)  # no images: said before the model loads
    if args.cache is not None:
        claim(args.cache, replace=True).close()  # so is a cache file that cannot be written
    captioner = load_model(args, runtimes=("torch", "onnx"))
    cache = FeatureCache(captioner, args.cache)
    ranked = search(
        captioner,
        args.images,
        args.queries,
        top_k=args.top_k,
        prompt=args.prompt,
        cache=cache,
        batch_size=args.batch_size,
        recursive=args.recursive,
    )
    for query, hits in zip(args.queries, ranked, strict=True):
        print(f"{one_line(query)!s}:")
        for hit in hits:
            print(f"  {hit.score:8.3f}  {one_line(hit.path)}")
    return EXIT_OK
