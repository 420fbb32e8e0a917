"""``bliptk score``: how likely the model finds given captions of an image, word by word; or,
with ``--references``, every reference caption of the images a records file names, least likely
first."""

from __future__ import annotations

import math
from pathlib import Path

from ..core.errors import InvalidOptionError
from .arguments import EXIT_OK, check_captions, load_model, model_arguments, one_line

HELP = "how likely the model finds captions of an image, word by word (or the references of records)"


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IMAGE", help="an image or video; with --references, a records file (.jsonl/.csv)")
    parser.add_argument("captions", metavar="CAPTION", nargs="*", help="captions to score (quote each)")
    model_arguments(parser, runtimes=("torch", "onnx"))
    parser.add_argument("--prompt", default=None, help='what each caption is conditioned on, not scored (default "a photography of")')
    parser.add_argument("--references", default=None, help="COCO caption annotations or {image_id: [captions]}: score them all")
    parser.add_argument("--least", type=int, default=10, help="with --references: list the N least likely (default 10)")
    parser.add_argument("--batch-size", type=int, default=16, help="captions scored together (default 16)")


def run(args) -> int:
    if args.references is not None:
        return _references(args)
    if not args.captions:
        raise InvalidOptionError("give the captions to score after the image (quote each), or --references with a records file")
    if not Path(args.input).exists():
        raise InvalidOptionError(f"{one_line(args.input)}: no such file")
    check_captions(args, args.captions)
    captioner = load_model(args, runtimes=("torch", "onnx"))
    for scored in captioner.score(args.input, args.captions, prompt=args.prompt, batch_size=args.batch_size):
        print(f"{one_line(args.input)}: {scored.text!r} (after {scored.prompt!r})")
        print(f"  total {scored.total:.3f}, mean {scored.mean:.3f} per token, perplexity {scored.perplexity:.1f}")
        print(f"  {'word':<16} {'logprob':>8} {'prob':>6} {'margin':>7}")
        for word, logprob, margin in scored.words():
            print(f"  {one_line(word):<16} {logprob:8.3f} {math.exp(logprob):6.3f} {margin:7.3f}")
    return EXIT_OK


def _references(args) -> int:
    from ..analysis.evaluation import score_references

    if args.captions:
        raise InvalidOptionError("with --references, give a records file and no captions: the references are scored")
    if args.least < 0:
        raise InvalidOptionError(f"--least must be an integer >= 0, got {args.least}")
    for name in (args.input, args.references):
        if not Path(name).is_file():
            raise InvalidOptionError(f"{one_line(name)}: no such file")
    captioner = load_model(args, runtimes=("torch", "onnx"))
    scored = score_references(captioner, args.input, args.references, batch_size=args.batch_size)
    images = len({row.image_id for row in scored})
    print(
        f"{len(scored)} reference captions of {images} images scored; the {min(args.least, len(scored))} least likely (mean logprob per token):"
    )
    for row in scored[: args.least]:
        print(f"  {row.score.mean:7.3f}  {one_line(row.path)}: {one_line(row.caption)}")
    return EXIT_OK
