"""The ``bliptk`` command (also ``python -m bliptk``).

Exit codes: 0 success; 1 some inputs failed (each reported), or an unexpected error (a bug,
reported in one line; ``--debug`` shows its traceback); 2 a caller's mistake, a bad input, a broken
file or a missing extra (every [`BliptkError`][bliptk.core.errors.BliptkError]); 130 interrupted (Ctrl-C; finished
records are kept); 141 the output pipe closed (``bliptk info --arrays | head``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import fields
from pathlib import Path

from ..core.decoding import DecodingOptions
from ..core.errors import (
    BliptkError,
    InputError,
    InvalidOptionError,
    NoInputsError,
    OutputError,
    RandomWeightsWarning,
    check_positive_int,
    first_line,
)
from ..core.models import DEFAULT_MODEL, available_models
from ..core.optional import missing_dependency
from ..core.video import VideoOptions
from ..store.outputs import Output, claim, reason
from ..store.records import RECORD_FORMATS, SHARD_FORMATS

__all__ = ["main"]

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE_CLOSED = 0, 1, 2, 130, 141
EXIT_BUG = 1  # an unexpected error: a bug of bliptk's, reported in one line (the traceback with --debug)


# The dtypes a model loads in (an ONNX export has its own: float32 or int8).
DTYPES = ("float32", "bfloat16", "float16", "int8")


def _model_arguments(parser: argparse.ArgumentParser, *, exports: bool = False, dtype: bool = True) -> None:
    """--model, --random-weights, --device and (with ``dtype``) --dtype; with ``exports``, --model
    takes an ONNX export folder too."""
    export = ", or an ONNX export folder (bliptk export)" if exports else ""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"ViT-B/16, ViT-L/16, tiny (the test net), a hub id, or a checkpoint folder{export} (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--random-weights", action="store_true", help="the architecture with random weights (no download; random words)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when present, else cpu)")
    if not dtype:
        return
    parser.add_argument(
        "--compile",
        action="store_true",
        help=(
            "compile the image encoder (torch.compile, inductor, freezing; ViT-B/16: 13-18 s the first time, 4-5 s once cached): "
            "faster on some CPUs, not all (see the Performance guide); the same captions"
        ),
    )
    help = (
        "float32 (default; the exact path), bfloat16 (faster on recent CPUs and GPUs), float16 (GPUs; float32 on a CPU), "
        "or int8 (CPU: bfloat16 with int8 decoder weights, the fastest at batch 1)"
    )
    if exports:
        help += (
            ". With an ONNX export: float32 (default) or int8, its quantized graphs, whose activations are quantized per batch, "
            "so that a caption can change with what else is in the batch"
        )
    parser.add_argument("--dtype", default=None, choices=DTYPES, help=help)


def _option_arguments(
    parser: argparse.ArgumentParser, options: type, names: tuple[str, ...] | None = None, unset: tuple[str, ...] = ()
) -> None:
    """One flag per field of an options dataclass ([`DecodingOptions`][bliptk.core.decoding.DecodingOptions], [`VideoOptions`][bliptk.core.video.VideoOptions];
    or of ``names``), with its type, default, choices and help from the field: ``max_new_tokens``
    becomes ``--max-new-tokens``. The flags of ``unset`` default to None, so that a command can
    tell whether they were given."""
    for option in fields(options):
        if (names is None and option.metadata.get("per_input", True)) or (names is not None and option.name in names):
            kind = next(t for t in (int, float, str) if t.__name__ in str(option.type))
            default = "" if option.default is None else f" (default {option.default})"
            flags = [f"--{option.name.replace('_', '-')}", *option.metadata.get("aliases", ())]
            parser.add_argument(
                *flags,
                dest=option.name,
                type=kind,
                default=None if option.name in unset else option.default,
                choices=option.metadata.get("choices"),
                help=option.metadata["help"] + default,
            )


def _options(args, options: type = DecodingOptions):
    """The options dataclass ``options`` of the flags [`_option_arguments()`][bliptk.cli.main._option_arguments] added."""
    return options(**{option.name: getattr(args, option.name) for option in fields(options) if hasattr(args, option.name)})


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one line, as bliptk's own: ``bliptk: error: ...`` and where
    to read more (exit 2), with a hint for a file whose name starts with a dash. A negative number
    is a value, in any notation (``--lr -1e-3``, which argparse alone takes for a flag), so that the
    option's own check says what is wrong with it."""

    argv: list[str] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)

    def error(self, message: str):
        dashed = [word for word in self.argv if word.startswith("-") and len(word) > 1 and Path(word).exists()]
        if dashed:
            message += f" ({dashed[0]} is a file: write ./{dashed[0]}, or put it after -- at the end of the command)"
        self.exit(EXIT_USAGE, f"bliptk: error: {message}; see {self.prog} --help\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bliptk",
        description="BLIP image and video captioning: caption, draw where each word looked, embed, map, evaluate, export to ONNX.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what bliptk does (and show an unexpected error's traceback)")
    parser.add_argument("--debug", action="store_true", help="show an unexpected error's traceback")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _caption_parser(commands)
    _attention_parser(commands)
    _explain_parser(commands)
    _embed_parser(commands)
    _map_parser(commands)
    _finetune_parser(commands)
    _eval_parsers(commands)
    export = commands.add_parser("export", help="export a model to ONNX, to caption with ONNX Runtime (no torch needed)")
    _model_arguments(export, dtype=False)
    export.add_argument("--out", required=True, help="folder to write the graphs, tokenizer, preprocessing config and manifest to")
    export.add_argument(
        "--int8", action="store_true", help="also write int8 graphs (quantized); bliptk caption --model FOLDER runs them with --dtype int8"
    )
    export.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    commands.add_parser("models", help="list the model family")
    info = commands.add_parser("info", help="net information: parameters and layer types (no weights needed)")
    info.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"ViT-B/16, ViT-L/16, tiny, a hub id or a checkpoint folder (default {DEFAULT_MODEL})"
    )
    info.add_argument("--arrays", action="store_true", help="also list every array's element count")
    return parser


def _caption_parser(commands) -> None:
    caption = commands.add_parser("caption", help="caption images and videos")
    caption.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image or video files, folders (their images and videos), glob patterns"
    )
    _model_arguments(caption, exports=True)
    _option_arguments(caption, DecodingOptions)
    _option_arguments(caption, VideoOptions)
    caption.add_argument("--segments", type=int, default=None, help="caption each video as K consecutive segments (a timeline)")
    caption.add_argument("--json", action="store_true", help="print one JSON record per line")
    caption.add_argument("--out", default=None, help="write records to this .jsonl or .csv file (with --ray: a folder of shards)")
    formats = sorted(set(RECORD_FORMATS + SHARD_FORMATS))
    caption.add_argument("--format", choices=formats, default=None, help="format of --out (default: by its extension; jsonl with --ray)")
    caption.add_argument(
        "--resume", action="store_true", help="continue --out: skip inputs done with the same model and options, retry failures"
    )
    caption.add_argument("--recursive", action="store_true", help="look in subfolders too")
    caption.add_argument("--batch-size", type=int, default=8, help="inputs captioned together (default 8)")
    caption.add_argument("--workers", type=int, default=2, help="threads reading and preprocessing images ahead; 0 for none (default 2)")
    caption.add_argument("--max-pixels", type=int, default=100_000_000, help="refuse larger images (default 100,000,000)")
    caption.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="caption through Ray Data (--out is a folder); ADDRESS: a cluster",
    )


def _attention_parser(commands) -> None:
    attention = commands.add_parser("attention", help="draw where each caption token looked, as a PNG grid")
    attention.add_argument("image", metavar="IMAGE", help="the image to caption")
    _out_arguments(attention, "PNG file to write")
    _model_arguments(attention)
    _option_arguments(attention, DecodingOptions, ("prompt", "max_new_tokens"))
    attention.add_argument(
        "--layer", type=int, nargs="+", default=[-1], help="decoder layer(s), averaged; negative counts from the end (default -1)"
    )
    attention.add_argument("--heads", default="mean", help='"mean" (default), "max", or a head index')
    _grid_arguments(attention)


def _out_arguments(parser, what: str) -> None:
    parser.add_argument("--out", required=True, help=what)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _grid_arguments(parser) -> None:
    """The options of a grid of per-token maps."""
    parser.add_argument("--raw", action="store_true", help="draw the raw maps instead of overlays on the image")
    parser.add_argument("--columns", type=int, default=6, help="panels per row (default 6)")


def _explain_parser(commands) -> None:
    from ..attribution.registry import DEFAULT_IG_STEPS, EXPLANATION_METHODS

    explain = commands.add_parser("explain", help="draw why each caption token was chosen (Grad-CAM, relevance...), as a PNG grid")
    explain.add_argument("image", metavar="IMAGE", help="the image (or video) to caption and explain")
    _out_arguments(explain, "PNG file to write")
    _model_arguments(explain)
    explain.add_argument(
        "--method", default="gradcam", choices=EXPLANATION_METHODS, help="how the maps are made (default gradcam; see the guide)"
    )
    explain.add_argument(
        "--layer",
        type=int,
        default=None,
        help="decoder layer of attention and gradcam, 0-based (default: attention the last, gradcam the middle)",
    )
    explain.add_argument("--caption", default=None, help="explain this caption, teacher-forced, instead of the model's own")
    _option_arguments(explain, DecodingOptions, ("prompt", "max_new_tokens", "num_beams"), unset=("max_new_tokens", "num_beams"))
    _option_arguments(explain, VideoOptions, ("num_frames",))
    explain.add_argument("--ig-steps", type=int, default=DEFAULT_IG_STEPS, help=f"integrated gradients' steps (default {DEFAULT_IG_STEPS})")
    _grid_arguments(explain)


def _finetune_parser(commands) -> None:
    finetune = commands.add_parser("finetune", help="fine-tune a captioner on your images and captions (full or LoRA)")
    finetune.add_argument(
        "--train", required=True, help='training pairs: a .jsonl of {"image", "caption"} lines, or COCO caption annotations'
    )
    finetune.add_argument("--val", default=None, help="validation pairs, the same formats: the loss (and COCO metrics) at each checkpoint")
    finetune.add_argument(
        "--images", default=None, help="the folder the data files' image paths are relative to (default: each file's own)"
    )
    finetune.add_argument("--out", required=True, help="the output folder: a checkpoint that --model and bliptk.load take")
    finetune.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _model_arguments(finetune, dtype=False)
    finetune.add_argument("--epochs", type=int, default=5, help="passes over the training data (default 5)")
    finetune.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps (default: the epochs decide)")
    finetune.add_argument("--batch-size", type=int, default=8, help="images per step, per process (default 8)")
    finetune.add_argument("--gradient-accumulation", type=int, default=1, help="batches per optimizer step (default 1)")
    finetune.add_argument(
        "--lr", type=float, default=1e-5, help="peak learning rate (default 1e-5, BLIP's for ViT-B/16; 2e-6 for ViT-L/16)"
    )
    finetune.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's weight decay (default 0.05)")
    finetune.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up before the cosine schedule (default 0)")
    finetune.add_argument("--prompt", default="a picture of ", help='the prompt, masked from the loss (default "a picture of ")')
    finetune.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing of the loss (default 0.1)")
    finetune.add_argument(
        "--lora", type=int, default=None, metavar="RANK", help="train LoRA adapters of this rank (alpha 2 x rank) instead of every weight"
    )
    finetune.add_argument("--lora-vision", action="store_true", help="with --lora: adapt the image encoder too")
    finetune.add_argument("--save-adapter", action="store_true", help="with --lora: also save the adapter alone in OUT/adapter")
    finetune.add_argument("--freeze-vision", action="store_true", help="train the text decoder only")
    finetune.add_argument(
        "--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass: less memory, more time"
    )
    finetune.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="float32 (default), bfloat16 autocast, float16 (GPUs)"
    )
    finetune.add_argument("--seed", type=int, default=0, help="seed of the data order and initialisation (default 0)")
    finetune.add_argument("--save-steps", type=int, default=None, help="a checkpoint every this many steps (default: each epoch)")
    finetune.add_argument(
        "--keep-checkpoints", type=int, default=1, help="the newest checkpoints kept on disk, besides the best (default 1)"
    )


def _embed_parser(commands) -> None:
    embed = commands.add_parser("embed", help="image-encoder embeddings of a folder, to an .npz file")
    embed.add_argument("folder", metavar="FOLDER", help="a folder of images")
    _out_arguments(embed, ".npz file to write (arrays: paths, embeddings, model, weights, pooling)")
    _model_arguments(embed)
    embed.add_argument(
        "--pooling", choices=("cls", "mean"), default="cls", help="cls: the class token; mean: the patches' mean (default cls)"
    )
    embed.add_argument("--batch-size", type=int, default=16, help="images encoded together (default 16)")
    embed.add_argument("--cache", default=None, help="folder to cache embeddings in (keyed by content, model and weights)")
    embed.add_argument("--recursive", action="store_true", help="include subfolders")


def _map_parser(commands) -> None:
    feature_map = commands.add_parser("map", help="feature-space map of a folder of images, as a PNG")
    feature_map.add_argument("folder", metavar="FOLDER", help="a folder of images")
    _out_arguments(feature_map, "PNG file to write")
    _model_arguments(feature_map)
    feature_map.add_argument("--method", choices=("umap", "tsne", "pca"), default="umap", help="the projection to 2-D (default umap)")
    feature_map.add_argument("--clusters", default=None, help="colour by K clusters: an integer, or auto to choose K")
    feature_map.add_argument("--labels", default=None, help="CSV with columns file,label to colour by")
    feature_map.add_argument("--callouts", action="store_true", help="write each label next to its point")
    feature_map.add_argument(
        "--pooling", choices=("cls", "mean"), default="cls", help="cls: the class token; mean: the patches' mean (default cls)"
    )
    feature_map.add_argument("--cache", default=None, help="folder to cache embeddings in")
    feature_map.add_argument("--seed", type=int, default=0, help="projection seed (default 0)")
    feature_map.add_argument("--recursive", action="store_true", help="include subfolders")


def _eval_parsers(commands) -> None:
    evaluation = commands.add_parser("eval", help="COCO caption metrics of predictions against references")
    evaluation.add_argument("predictions", help="COCO results JSON ([{image_id, caption}]) or bliptk records (.jsonl/.csv)")
    evaluation.add_argument("references", help="COCO captions annotations JSON, or {image_id: [captions]}")
    evaluation.add_argument("--worst", type=int, default=5, help="list the N captions with the lowest CIDEr (default 5)")
    coco = commands.add_parser("eval-coco", help="caption a COCO split with the BLIP paper's settings and score it")
    coco.add_argument("--images", required=True, help="folder of the split's images (COCO file names)")
    coco.add_argument("--annotations", required=True, help="COCO captions annotations (or {image_id: [captions]})")
    _model_arguments(coco)
    coco.add_argument(
        "--out", default="coco-results.json", help="COCO results JSON to write; records go beside it, .jsonl (default coco-results.json)"
    )
    coco.add_argument("--resume", action="store_true", help="continue an interrupted run")
    coco.add_argument("--batch-size", type=int, default=8, help="images captioned together (default 8)")
    coco.add_argument("--prompt", default="a picture of ", help='the paper\'s prompt (default "a picture of ")')
    coco.add_argument("--num-beams", type=int, default=3, help="beams, as in the paper (default 3)")
    coco.add_argument("--max-length", type=int, default=20, help="prompt plus caption tokens, as in BLIP's code (default 20)")
    coco.add_argument("--min-length", type=int, default=5, help="prompt plus caption tokens (default 5)")


def _load(args, exports: bool = False):
    """The captioner the flags name; with ``exports``, an ONNX export folder as --model gives its
    ONNX Runtime captioner (which only captions)."""
    from ..onnx import is_export

    if is_export(args.model):
        if not exports:
            raise InvalidOptionError(f"{args.model} is an ONNX export, which captions only; give the model itself for {args.command}")
        if args.random_weights or args.device or getattr(args, "compile", False):
            raise InvalidOptionError(
                "an ONNX export has its own weights and runs on the CPU in ONNX Runtime: drop --random-weights, --device and --compile"
            )
        from ..onnx import load as load_export

        return load_export(args.model, dtype=getattr(args, "dtype", None) or "float32")
    load = _torch_module("model.loading").load
    return load(
        args.model,
        pretrained=not args.random_weights,
        device=args.device,
        dtype=getattr(args, "dtype", None),
        compile=getattr(args, "compile", False),
    )


def _torch_module(name: str):
    """A module of bliptk's that needs torch; without torch, the error that says what to install."""
    import importlib

    try:
        return importlib.import_module(f"bliptk.{name}")
    except ModuleNotFoundError as error:
        missing = missing_dependency(error)
        if missing is None:
            raise
        raise missing from None


def _check_prompts(args, options: DecodingOptions) -> None:
    """Check the prompt against the vocabulary the model will use (it fits the decoder; characters
    outside the vocabulary are warned about), before any model loads."""
    from ..core.decoding import prompt_ids
    from ..core.tokenizer import load_tokenizer

    vocabulary = Path(args.model) / "vocab.txt"
    tokenizer = load_tokenizer(vocabulary if vocabulary.is_file() else None)
    prompt_ids(tokenizer, options.prompt_text, options.max_new_tokens, 512)


def _caption(args) -> int:
    from contextlib import nullcontext

    from ..captioning.folder import BatchStatus, check_batch_options, expand_inputs
    from ..core.pipeline import caption_timeline
    from ..core.video import is_video
    from ..store.records import RecordOutput

    options, video_options = _options(args), _options(args, VideoOptions)
    check_batch_options(options, args.batch_size, args.workers, args.max_pixels)
    if args.segments is not None:
        check_positive_int("segments", args.segments)
    _check_prompts(args, options)
    if args.ray:
        return _caption_on_ray(args, options, video_options)
    if args.resume and not args.out:
        raise InvalidOptionError("--resume continues an --out file; give --out")
    if args.segments and args.out:
        raise InvalidOptionError("--segments prints a timeline; it can't be combined with --out")
    inputs = expand_inputs(args.inputs, args.recursive)  # nothing to caption: say so before loading a model
    # The output is checked and locked before the model loads: a mistake there costs no waiting.
    with RecordOutput(args.out, args.format, args.resume) if args.out else nullcontext() as output:
        captioner = _load(args, exports=True)
        status = BatchStatus()
        if args.segments:
            videos = [path for path in inputs if is_video(path)]
            inputs = [path for path in inputs if path not in videos]
            for path in videos:  # a video that fails is reported, and the others go on
                try:
                    rows = caption_timeline(captioner, path, args.segments, options=options, video_options=video_options)
                except InputError as error:
                    status.failed += 1
                    print(f"bliptk: error: {_one_line(str(error))}", file=sys.stderr, flush=True)
                    continue
                _report_timeline(args, path, rows, captioner, options)
            if not inputs:
                return EXIT_SOME_FAILED if status.failed else EXIT_OK
        records = captioner.caption_files(
            inputs,
            output,
            batch_size=args.batch_size,
            workers=args.workers,
            max_pixels=args.max_pixels,
            progress=None if args.out else False,
            status=status,
            options=options,
            video_options=video_options,
        )
        for record in records:
            if args.out is None or record["error"]:
                _report(args, record)
    if args.out:
        print(
            f"bliptk: {status.captioned} captioned, {status.failed} failed, {status.skipped} already done "
            f"(of {status.total}){', interrupted' if status.interrupted else ''}; records in {args.out}",
            file=sys.stderr,
        )
    if status.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if status.failed else EXIT_OK


def _caption_on_ray(args, options: DecodingOptions, video_options: VideoOptions) -> int:
    from ..captioning.ray_data import caption_dataset

    if not args.out:
        raise InvalidOptionError("--ray writes shards into a folder: give --out FOLDER")
    summary = caption_dataset(
        # One input stays a string, so that a folder URI (s3://bucket/photos/) is listed by Ray.
        args.inputs[0] if len(args.inputs) == 1 else args.inputs,
        output=args.out,
        model=args.model,
        pretrained=not args.random_weights,
        dtype=args.dtype,
        compile=args.compile,
        batch_size=args.batch_size,
        format=args.format or "jsonl",
        recursive=args.recursive,
        max_pixels=args.max_pixels,
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
        print(f"bliptk: error: {_one_line(record['error']['message'])}", file=sys.stderr, flush=True)
    else:
        print(f"{_one_line(record['path'])}: {record['caption']}", flush=True)


def _one_line(text: str) -> str:
    """``text`` on one line: a path may hold a newline or other control characters (escaped as in
    Python, ``\\n``), or bytes that are no UTF-8 (as ``\\x..``)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii") for c in text)


def _attention(args) -> int:
    from ..core.preprocess import load_image
    from ..model.attention import plot_attention_maps, plot_attention_overlays

    heads = int(args.heads) if args.heads.lstrip("-").isdigit() else args.heads
    options = _options(args)
    _check_prompts(args, options)
    check_positive_int("columns", args.columns)
    with _figure_output(args) as out:
        image = load_image(args.image)
        captioner = _load(args)
        caption = captioner.caption_features(captioner.encode_image(image), options, return_attention=True)[0]
        if not caption.token_ids:
            raise InvalidOptionError(f"{_one_line(args.image)}: the caption has no generated tokens to draw")
        map_options = {"layer": args.layer, "heads": heads}
        if args.raw:
            figure = plot_attention_maps(caption, columns=args.columns, **map_options)
        else:
            figure = plot_attention_overlays(image, caption, columns=args.columns, **map_options)
        made = {**captioner.provenance(), "options": options.as_dict(), **map_options, "image": args.image}
        _save_figure(out, figure, {**made, "caption": caption.text, "tokens": caption.tokens, "token_ids": caption.token_ids})
    print(f"{_one_line(args.image)}: {caption.text}\nwrote {_one_line(str(out.path))}")
    return EXIT_OK


def _explain(args) -> int:
    from ..core.video import is_video, video_frames
    from ..model.attention import plot_attention_maps, plot_attention_overlays

    explanations = _torch_module("attribution.explanation")
    check_positive_int("columns", args.columns)
    check_positive_int("ig_steps", args.ig_steps)
    decoding = {name: getattr(args, name) for name in ("max_new_tokens", "num_beams") if getattr(args, name) is not None}
    if args.caption is not None and decoding:
        flags = " and ".join("--" + name.replace("_", "-") for name in decoding)
        raise InvalidOptionError(f"{flags} apply when explain captions the image itself; with --caption, that caption is explained")
    # The layer is checked against the architecture (shapes only, no weights) before the model loads.
    layers = _torch_module("model.loading").architecture(args.model).config.text_config.num_hidden_layers
    explanations.resolved_layer(args.method, args.layer, layers)
    with _figure_output(args) as out:
        video = is_video(args.image)
        image = video_frames(args.image, args.num_frames) if video else _torch_module("core.preprocess").load_image(args.image)
        captioner = _load(args)
        explanation = explanations.explain(
            captioner, image, args.caption, method=args.method, layer=args.layer, prompt=args.prompt, ig_steps=args.ig_steps, **decoding
        )
        if not explanation.tokens:
            raise InvalidOptionError(f"{_one_line(args.image)}: the caption has no generated tokens to explain")
        if args.raw:
            figure = plot_attention_maps(explanation, columns=args.columns)
        else:
            figure = plot_attention_overlays(image[len(image) // 2] if video else image, explanation, columns=args.columns)
        made = {**explanation.provenance, "image": args.image}
        # The caption as given (or made), and the very tokens explained: [UNK] included, which the text drops.
        caption = args.caption if args.caption is not None else explanation.text
        _save_figure(out, figure, {**made, "caption": caption, "tokens": explanation.tokens, "token_ids": explanation.token_ids})
    print(f"{_one_line(args.image)}: {explanation.text}\nwrote {_one_line(str(out.path))}")
    return EXIT_OK


def _finetune(args) -> int:
    finetuning = _torch_module("training.finetune")
    lora = None
    if args.lora is not None:
        lora = {"r": args.lora, "alpha": 2 * args.lora, "vision": args.lora_vision, "save_adapter": args.save_adapter}
    elif args.lora_vision or args.save_adapter:
        raise InvalidOptionError("--lora-vision and --save-adapter go with --lora RANK")
    result = finetuning.finetune(
        args.model,
        args.train,
        out=args.out,
        val=args.val,
        images=args.images,
        resume=args.resume,
        load_options={"pretrained": not args.random_weights, "device": args.device},
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps,
        prompt=args.prompt,
        label_smoothing=args.label_smoothing,
        lora=lora,
        freeze_vision=args.freeze_vision,
        gradient_checkpointing=args.gradient_checkpointing,
        dtype=args.dtype,
        seed=args.seed,
        save_steps=args.save_steps,
        keep_checkpoints=args.keep_checkpoints,
    )
    losses = [entry["loss"] for entry in result.history if "loss" in entry]
    if not finetuning.is_main_process():
        return EXIT_OK
    if result.finished_before:
        print(f"the run in {_one_line(str(result.out))} had finished: nothing to train; its model is there")
        return EXIT_OK
    last = f", last loss {losses[-1]:.4f}" if losses else ""
    print(
        f"fine-tuned {result.steps} steps{last}; {result.trainable_parameters:,} of {result.total_parameters:,} parameters trained; "
        f"wrote {_one_line(str(result.out))}"
    )
    return EXIT_OK


def _save_figure(out: Output, figure, provenance: dict) -> None:
    """Write a figure as PNG, whole or not at all, with how it was made in its metadata (the
    ``Description`` text chunk: model, weights, options, as JSON)."""
    from ..version import __version__

    metadata = {"Software": f"bliptk {__version__}", "Description": json.dumps(provenance)}
    out.write(lambda path: figure.savefig(path, dpi=100, format="png", metadata=metadata))


def _output_file(args, suffix: str = "") -> Output:
    """The --out file of a command that writes one, claimed before any model loads (locked against
    every other bliptk process, its folder checked), replaced only with --overwrite."""
    if args.out == "-":
        raise InvalidOptionError(f"--out -: {args.command} writes a file, not standard output; name the file")
    out = Path(args.out)
    if suffix and out.suffix != suffix:  # as np.savez names it
        out = out.with_name(out.name + suffix)
    return claim(out, replace=args.overwrite)


def _figure_output(args) -> Output:
    """The --out PNG of a figure command: a name without an extension is written as named, one
    with another extension (.jpg, .pdf) refused, since the file is a PNG with its provenance in it."""
    output = _output_file(args)  # the lock first: an output another process holds is said to be so, whatever its name
    name = output.path.name
    suffix = (output.path.suffix or (name if name.startswith(".") else "")).lower()  # ".jpg" is a JPEG's name, not a hidden PNG
    if suffix and suffix != ".png":
        output.close()
        raise InvalidOptionError(
            f"--out {_one_line(args.out)}: figures are written as PNG, with how they were made in their metadata; name the file .png"
        )
    return output


def _folder_images(args) -> list[Path]:
    from ..core.files import image_files

    if not Path(args.folder).is_dir():
        raise InvalidOptionError(f"{args.folder}: not a folder")
    paths = image_files(args.folder, recursive=args.recursive)
    if not paths:
        raise NoInputsError(
            [f"folder {args.folder} holds no image files"], 0 if args.recursive else len(image_files(args.folder, recursive=True))
        )
    return paths


def _embed(args) -> int:
    import numpy as np

    with _output_file(args, ".npz") as out:
        paths = _folder_images(args)
        captioner = _load(args)
        embeddings = captioner.embed(paths, pooling=args.pooling, batch_size=args.batch_size, cache=args.cache)
        arrays = {
            "paths": np.array([str(p) for p in paths]),
            "embeddings": embeddings,
            "model": captioner.name,
            "weights": json.dumps(captioner.weights.as_dict()),
            "pooling": args.pooling,
        }
        out.write(lambda path: np.savez(path, **arrays))
    print(f"{len(paths)} embeddings of size {embeddings.shape[1]} written to {_one_line(str(out.path))}")
    return EXIT_OK


def _map(args) -> int:
    from ..analysis.feature_space import CLUSTER_PALETTE, cluster, plot_feature_space

    with _figure_output(args) as out:
        paths = _folder_images(args)
        if (
            args.clusters is not None
            and args.clusters != "auto"
            and not (args.clusters.isdigit() and 1 <= int(args.clusters) <= len(paths))
        ):
            raise InvalidOptionError(
                f"--clusters must be auto or an integer in [1, {len(paths)}] (the folder's images), got {args.clusters!r}"
            )
        labels = [_label(_read_labels(args.labels), path) for path in paths] if args.labels else None
        captioner = _load(args)
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
        _save_figure(out, figure, {**made, "clusters": args.clusters, "labels": args.labels})
    print(f"{len(paths)} images mapped to {_one_line(str(out.path))}")
    return EXIT_OK


def _read_labels(path: str) -> dict[str, str]:
    """``{file: label}`` of a labels CSV (columns ``file`` and ``label``).

    Raises:
        InputError: The file cannot be read, or lacks the columns.
    """
    import csv

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


def _print_evaluation(result, worst: int) -> None:
    print(result)
    if worst:
        print(f"lowest CIDEr ({min(worst, len(result.per_image))} of {len(result.per_image)}):")
        for image_id, caption, cider in result.per_image[:worst]:
            print(f"  {cider:6.3f}  {image_id}: {caption}")


def _eval(args) -> int:
    from ..analysis.evaluation import evaluate

    if args.worst < 0:
        raise InvalidOptionError(f"--worst must be an integer >= 0, got {args.worst}")

    _print_evaluation(evaluate(args.predictions, args.references), args.worst)
    return EXIT_OK


def _eval_coco(args) -> int:
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
            captioner = _load(args)
            prompt_length = len(captioner.tokenizer.encode(args.prompt))
            # BLIP's max_length and min_length count the prompt's tokens ([DEC] included) too.
            options = DecodingOptions(
                prompt=args.prompt,
                max_new_tokens=max(0, args.max_length - prompt_length),
                num_beams=args.num_beams,
                min_new_tokens=max(0, args.min_length - prompt_length),
            )
            records = captioner.caption_files(args.images, output, batch_size=args.batch_size, options=options)
            failed = [record for record in records if record["error"]]
            made = made_by(captioner, options)
        for record in failed:
            print(f"bliptk: error: {_one_line(record['error']['message'])}", file=sys.stderr)
        # This run's records only: the records file may hold others, of another run or command.
        predictions = load_predictions([r for r in read_records(records_file) if made(r)], numeric_ids(references))
        results = [{"image_id": image_id, "caption": caption} for image_id, caption in predictions.items()]
        out.write(lambda path: path.write_text(json.dumps(results, indent=1)))
    print(f"{len(results)} captions written to {_one_line(str(out.path))}")
    _print_evaluation(evaluate(results, {i: references[i] for i in predictions if i in references}), 5)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _check_results_file(out: Path, args) -> None:
    """eval-coco's results file: never one of its inputs, and continued only if it is a results file
    (a list of ``{image_id, caption}``), so that no other JSON file is replaced by results."""
    if os.path.realpath(out) == os.path.realpath(args.annotations):
        raise InvalidOptionError(f"--out {_one_line(args.out)} is the --annotations file; write the results to a file of their own")
    if not out.exists() or out.stat().st_size == 0:
        return
    try:
        results = json.loads(out.read_bytes().decode("utf-8"))
        if not isinstance(results, list) or not all(isinstance(r, dict) and {"image_id", "caption"} <= set(r) for r in results):
            raise ValueError("not a list of {image_id, caption}")
    except (UnicodeDecodeError, ValueError) as problem:
        raise OutputError(
            f"{_one_line(args.out)} is no COCO results file ({first_line(problem)}), so it is left alone: choose another --out"
        ) from None


def _info(args) -> int:
    # Net information needs the architecture only: no weights, no download, no memory.
    information = _torch_module("model.info").net_information(_torch_module("model.loading").architecture(args.model))
    print(f"model: {args.model}")
    print(f"total parameters: {information.arrays_total_element_count:,}")
    print("layer types:")
    for name, count in information.layer_type_counts.items():
        print(f"  {name}: {count}")
    if args.arrays:
        print("arrays:")
        for name, count in information.arrays_element_counts.items():
            print(f"  {name}: {count:,}")
    return EXIT_OK


def _export(args) -> int:
    exporter = _torch_module("model.exporting")
    with exporter.claim_export_folder(args.out, args.overwrite, args.model) as out:  # before the model loads
        captioner = _load(args)
        folder = exporter.export(captioner, out, int8=args.int8)
    check = json.loads((folder / "manifest.json").read_text())["check"]
    print(
        f"exported {captioner.name} to {_one_line(str(folder))}: features within {check['features_max_abs_diff']:.1e} and logits within "
        f"{check['logits_max_abs_diff']:.1e} of torch (tolerance {check['tolerance']['logits']:g})"
    )
    return EXIT_OK


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"bliptk: warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = _parser()
    _Parser.argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    commands = {
        "models": _models,
        "info": _info,
        "attention": _attention,
        "explain": _explain,
        "eval": _eval,
        "eval-coco": _eval_coco,
        "embed": _embed,
        "map": _map,
        "caption": _caption,
        "export": _export,
        "finetune": _finetune,
    }
    stdout = sys.stdout
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", RandomWeightsWarning)  # once per captioner, which says it once
        try:
            sys.stdout = _Output(stdout)
            code = commands[args.command](args)
            sys.stdout.flush()
            return code
        except BliptkError as error:
            if isinstance(error, _StdoutError):
                _silence_stdout()
            print(f"bliptk: error: {_one_line(error.command_line_message())}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("bliptk: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader went away (| head): stop quietly
            _silence_stdout()
            return EXIT_PIPE_CLOSED
        except Exception as error:  # a bug: one line, the traceback on request
            missing = missing_dependency(error) if isinstance(error, ModuleNotFoundError) else None
            if missing is not None:  # a package that a feature imports as it runs is not installed
                print(f"bliptk: error: {missing}", file=sys.stderr)
                return EXIT_USAGE
            if args.debug or args.verbose:
                import traceback

                traceback.print_exc()
            print(
                f"bliptk: internal error: {type(error).__name__}: {_one_line(first_line(error))}. This is a bug in bliptk; "
                "please report it, with the output of the same command run with --debug",
                file=sys.stderr,
            )
            return EXIT_BUG
        finally:
            sys.stdout = stdout


class _StdoutError(OutputError):
    """Standard output cannot be written (a full disk behind it, a closed terminal)."""


class _Output:
    """Standard output, whose failures are output errors of the command, not bugs (a closed pipe
    stays a BrokenPipeError, which ends the command quietly)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as problem:
            raise _StdoutError(f"cannot write to standard output ({reason(problem)})") from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as problem:
            raise _StdoutError(f"cannot write to standard output ({reason(problem)})") from None

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit raises no second BrokenPipeError."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError):  # no real stdout (pytest's capture)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _models(args) -> int:
    print(available_models(include_test=True))
    return EXIT_OK
