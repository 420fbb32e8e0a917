"""``bliptk eval``: the COCO caption metrics of predictions against references."""

from __future__ import annotations

from ..core.errors import InvalidOptionError
from .arguments import EXIT_OK

HELP = "COCO caption metrics of predictions against references"


def add_arguments(parser) -> None:
    parser.add_argument("predictions", help="COCO results JSON ([{image_id, caption}]) or bliptk records (.jsonl/.csv)")
    parser.add_argument("references", help="COCO captions annotations JSON, or {image_id: [captions]}")
    parser.add_argument("--worst", type=int, default=5, help="list the N captions with the lowest CIDEr (default 5)")
    parser.add_argument(
        "--instances", default=None, help="COCO instance annotations (instances_*.json): CHAIR, object hallucination, beside the metrics"
    )
    parser.add_argument("--chair", action="store_true", help="CHAIR against the objects the references mention (without --instances)")


def run(args) -> int:
    from ..analysis.evaluation import evaluate

    if args.worst < 0:
        raise InvalidOptionError(f"--worst must be an integer >= 0, got {args.worst}")
    print_evaluation(evaluate(args.predictions, args.references, instances=args.instances, chair=args.chair or None), args.worst)
    return EXIT_OK


def print_evaluation(result, worst: int) -> None:
    """The scores, and the ``worst`` captions by CIDEr."""
    print(result)
    if worst:
        print(f"lowest CIDEr ({min(worst, len(result.per_image))} of {len(result.per_image)}):")
        for image_id, caption, cider in result.per_image[:worst]:
            print(f"  {cider:6.3f}  {image_id}: {caption}")
    if worst and result.chair is not None:
        hallucinating = [(i, c) for i, c in zip(result.chair.ids, result.chair.captions, strict=True) if c.hallucinated]
        print(f"hallucinated objects ({len(hallucinating)} of {len(result.chair.captions)} captions):")
        for image_id, objects in hallucinating[:worst]:
            named = ", ".join(sorted({m.words for m in objects.hallucinated}))
            print(f"  {image_id}: {objects.caption} [{named}]")
