"""``bliptk eval``: the COCO caption metrics of predictions against references."""

from __future__ import annotations

from ..core.errors import InvalidOptionError
from .arguments import EXIT_OK

HELP = "COCO caption metrics of predictions against references"


def add_arguments(parser) -> None:
    parser.add_argument("predictions", help="COCO results JSON ([{image_id, caption}]) or bliptk records (.jsonl/.csv)")
    parser.add_argument("references", help="COCO captions annotations JSON, or {image_id: [captions]}")
    parser.add_argument("--worst", type=int, default=5, help="list the N captions with the lowest CIDEr (default 5)")


def run(args) -> int:
    from ..analysis.evaluation import evaluate

    if args.worst < 0:
        raise InvalidOptionError(f"--worst must be an integer >= 0, got {args.worst}")
    print_evaluation(evaluate(args.predictions, args.references), args.worst)
    return EXIT_OK


def print_evaluation(result, worst: int) -> None:
    """The scores, and the ``worst`` captions by CIDEr."""
    print(result)
    if worst:
        print(f"lowest CIDEr ({min(worst, len(result.per_image))} of {len(result.per_image)}):")
        for image_id, caption, cider in result.per_image[:worst]:
            print(f"  {cider:6.3f}  {image_id}: {caption}")
