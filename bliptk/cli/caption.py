"""``bliptk caption``: caption images and videos, print them, or write records (resumable), or
caption through Ray Data. Its decoding, video and job flags are the fields of
[`DecodingOptions`][bliptk.core.decoding.DecodingOptions], [`VideoOptions`][bliptk.core.video.VideoOptions]
and [`FolderJobOptions`][bliptk.captioning.options.FolderJobOptions]; its model flags,
[`LoadOptions`][bliptk.captioning.runtimes.LoadOptions]' (an ONNX export folder too)."""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext

from ..captioning.options import FolderJobOptions
from ..core.decoding import DecodingOptions
from ..core.errors import InputError, InvalidOptionError, check_positive_int
from ..core.video import VideoOptions
from .arguments import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    check_prompts,
    load_model,
    load_options,
    model_arguments,
    one_line,
    option_arguments,
    options_from,
    torch_module,
)

HELP = "caption images and videos"
RUNTIMES = ("torch", "onnx")


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, folders (their images and videos), glob patterns")
    model_arguments(parser, runtimes=RUNTIMES)
    option_arguments(parser, DecodingOptions)
    option_arguments(parser, VideoOptions)
    parser.add_argument("--segments", type=int, default=None, help="caption each video as K consecutive segments (a timeline)")
    parser.add_argument("--json", action="store_true", help="print one JSON record per line")
    parser.add_argument("--out", default=None, help="write records to this .jsonl or .csv file (with --ray: a folder of shards)")
    option_arguments(parser, FolderJobOptions)
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="caption through Ray Data (--out is a folder); ADDRESS: a cluster",
    )


def run(args) -> int:
    from ..captioning.folder import BatchStatus, check_batch_options, expand_inputs
    from ..core.pipeline import caption_timeline
    from ..core.video import is_video
    from ..store.records import RecordOutput

    options, video_options, job = options_from(args), options_from(args, VideoOptions), options_from(args, FolderJobOptions)
    check_batch_options(options)
    if args.segments is not None:
        check_positive_int("segments", args.segments)
    check_prompts(args, options)
    if args.ray:
        return _caption_on_ray(args, options, video_options, job)
    if job.resume and not args.out:
        raise InvalidOptionError("--resume continues an --out file; give --out")
    if args.segments and args.out:
        raise InvalidOptionError("--segments prints a timeline; it can't be combined with --out")
    inputs = expand_inputs(args.inputs, job.recursive)  # nothing to caption: say so before loading a model
    # The output is checked and locked before the model loads: a mistake there costs no waiting.
    with RecordOutput(args.out, job.format, job.resume) if args.out else nullcontext() as output:
        if output is not None and job.resume and not args.segments and _all_done(args, inputs, output, options, video_options, job):
            print(
                f"bliptk: nothing to do: all {len(inputs)} inputs have their records in {args.out} (the same model, weights "
                "and options; the weights known by their files' fingerprint), so the model was not loaded",
                file=sys.stderr,
            )
            return _summary(args, BatchStatus(total=len(inputs), skipped=len(inputs)))
        captioner = load_model(args, RUNTIMES)
        status = BatchStatus()
        if args.segments:
            videos = [path for path in inputs if is_video(path)]
            inputs = [path for path in inputs if path not in videos]
            for path in videos:  # a video that fails is reported, and the others go on
                try:
                    rows = caption_timeline(captioner, path, args.segments, options=options, video_options=video_options)
                except InputError as error:
                    status.failed += 1
                    print(f"bliptk: error: {one_line(str(error))}", file=sys.stderr, flush=True)
                    continue
                _report_timeline(args, path, rows, captioner, options)
            if not inputs:
                return EXIT_SOME_FAILED if status.failed else EXIT_OK
        records = captioner.caption_files(
            inputs, output, job=job, progress=None if args.out else False, status=status, options=options, video_options=video_options
        )
        for record in records:
            if args.out is None or record["error"]:
                _report(args, record)
    return _summary(args, status)


def _all_done(args, inputs: list[str], output, options: DecodingOptions, video_options: VideoOptions, job: FolderJobOptions) -> bool:
    """Whether every input already has its record in a resumed output, made with the model, weights
    and options this job would caption with, known without loading the model: the checkpoint's
    weights by the fingerprint of its files. False where that cannot be known so (random weights,
    another runtime, weights in other files than safetensors): the model loads and tells."""
    from types import SimpleNamespace

    from ..captioning.runtimes import runtime_of
    from ..core.pipeline import own_options
    from ..store.records import done_inputs, record_options

    loading = load_options(args)
    if not output.existing or runtime_of(loading).name != "torch":
        return False
    identity = torch_module("model.loading").checkpoint_identity(
        loading.model, pretrained=loading.pretrained, device=loading.device, dtype=loading.dtype, compile=loading.compile
    )
    if identity is None:
        return False
    name, weights, prompt = identity
    recorded = record_options(own_options(SimpleNamespace(prompt=prompt), options), video_options, job.scores)
    done = done_inputs(output.existing, {"model": name, "weights": weights.as_dict()}, recorded)
    return all(path in done for path in inputs)


def _summary(args, status) -> int:
    if args.out:
        print(
            f"bliptk: {status.captioned} captioned, {status.failed} failed, {status.skipped} already done "
            f"(of {status.total}){', interrupted' if status.interrupted else ''}; records in {args.out}",
            file=sys.stderr,
        )
    if status.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if status.failed else EXIT_OK


def _caption_on_ray(args, options: DecodingOptions, video_options: VideoOptions, job: FolderJobOptions) -> int:
    from ..captioning.ray_data import caption_dataset

    if not args.out:
        raise InvalidOptionError("--ray writes shards into a folder: give --out FOLDER")
    summary = caption_dataset(
        # One input stays a string, so that a folder URI (s3://bucket/photos/) is listed by Ray.
        args.inputs[0] if len(args.inputs) == 1 else args.inputs,
        output=args.out,
        model=load_options(args),
        job=job,
        address=None if args.ray == "local" else args.ray,
        options=options,
        video_options=video_options,
    )
    print(
        f"bliptk: {summary.captioned} captioned, {summary.failed} failed, {summary.skipped} already done "
        f"(of {summary.total}); shards in {summary.output}",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def _report_timeline(args, path: str, rows, captioner, options: DecodingOptions) -> None:
    if args.json:
        segments = [{"start": row.start, "end": row.end, "caption": row.caption.text} for row in rows]
        record = {"path": path, "kind": "video", "segments": segments, **captioner.provenance(), "options": options.as_dict()}
        print(json.dumps(record), flush=True)
    else:
        print(f"{path}:", flush=True)
        for row in rows:
            print(f"  {row}", flush=True)


def _report(args, record: dict) -> None:
    if args.json and not args.out:
        print(json.dumps(record), flush=True)
    elif record.get("error"):
        print(f"bliptk: error: {one_line(record['error']['message'])}", file=sys.stderr, flush=True)
    else:
        print(f"{one_line(record['path'])}: {record['caption']}", flush=True)
