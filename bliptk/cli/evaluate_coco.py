"""``bliptk eval-coco``: caption a COCO split with the BLIP paper's decoding
([`paper_decoding()`][bliptk.core.decoding.paper_decoding]) and score it; the records go beside the
results, and an interrupted run resumes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..core.decoding import PAPER_PROMPT, paper_decoding
from ..core.errors import InvalidOptionError, OutputError, first_line
from ..store.outputs import claim
from .arguments import EXIT_OK, EXIT_SOME_FAILED, load_model, model_arguments, one_line
from .evaluate import print_evaluation

HELP = "caption a COCO split with the BLIP paper's settings and score it"


def add_arguments(parser) -> None:
    parser.add_argument("--images", required=True, help="folder of the split's images (COCO file names)")
    parser.add_argument("--annotations", required=True, help="COCO captions annotations (or {image_id: [captions]})")
    model_arguments(parser)
    parser.add_argument(
        "--out", default="coco-results.json", help="COCO results JSON to write; records go beside it, .jsonl (default coco-results.json)"
    )
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--batch-size", type=int, default=8, help="images captioned together (default 8)")
    parser.add_argument("--prompt", default=PAPER_PROMPT, help=f'the paper\'s prompt (default "{PAPER_PROMPT}")')
    parser.add_argument("--num-beams", type=int, default=3, help="beams, as in the paper (default 3)")
    parser.add_argument("--max-length", type=int, default=20, help="prompt plus caption tokens, as in BLIP's code (default 20)")
    parser.add_argument("--min-length", type=int, default=5, help="prompt plus caption tokens (default 5)")


def run(args) -> int:
    from ..analysis.evaluation import evaluate, load_predictions, load_references, numeric_ids
    from ..captioning.folder import made_by
    from ..store.records import RecordOutput, read_records

    if not Path(args.images).is_dir():
        raise InvalidOptionError(f"--images {args.images}: not a folder; give the folder of the split's images")
    if Path(args.out).suffix.lower() != ".json":
        raise InvalidOptionError(f"--out {args.out}: the results are a COCO results .json file (the records go beside it, as .jsonl)")
    with claim(args.out, replace=args.resume, fix="pass --resume to continue that run") as out:
        _check_results_file(out.path, args)
        references = load_references(args.annotations)
        records_file = out.path.with_suffix(".jsonl")
        with RecordOutput(records_file, resume=args.resume) as output:
            captioner = load_model(args)
            options = paper_decoding(
                captioner.tokenizer, args.prompt, num_beams=args.num_beams, max_length=args.max_length, min_length=args.min_length
            )
            records = captioner.caption_files(args.images, output, batch_size=args.batch_size, options=options)
            failed = [record for record in records if record["error"]]
            made = made_by(captioner, options)
        for record in failed:
            print(f"bliptk: error: {one_line(record['error']['message'])}", file=sys.stderr)
        # This run's records only: the records file may hold others, of another run or command.
        predictions = load_predictions([r for r in read_records(records_file) if made(r)], numeric_ids(references))
        results = [{"image_id": image_id, "caption": caption} for image_id, caption in predictions.items()]
        out.write(lambda path: path.write_text(json.dumps(results, indent=1)))
    print(f"{len(results)} captions written to {one_line(str(out.path))}")
    print_evaluation(evaluate(results, {i: references[i] for i in predictions if i in references}), 5)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _check_results_file(out: Path, args) -> None:
    """eval-coco's results file: never one of its inputs, and continued only if it is a results file
    (a list of ``{image_id, caption}``), so that no other JSON file is replaced by results."""
    if os.path.realpath(out) == os.path.realpath(args.annotations):
        raise InvalidOptionError(f"--out {one_line(args.out)} is the --annotations file; write the results to a file of their own")
    if not out.exists() or out.stat().st_size == 0:
        return
    try:
        results = json.loads(out.read_bytes().decode("utf-8"))
        if not isinstance(results, list) or not all(isinstance(r, dict) and {"image_id", "caption"} <= set(r) for r in results):
            raise ValueError("not a list of {image_id, caption}")
    except (UnicodeDecodeError, ValueError) as problem:
        raise OutputError(
            f"{one_line(args.out)} is no COCO results file ({first_line(problem)}), so it is left alone: choose another --out"
        ) from None
