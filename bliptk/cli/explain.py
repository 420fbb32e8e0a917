"""``bliptk explain``: why each caption token was chosen, by a method of the registry
([`bliptk.attribution.registry`][bliptk.attribution.registry]). One image: a PNG grid. Several
inputs, a folder or a pattern: an explanation job's folder (records and saved maps, resumable; see
[`bliptk.attribution.folder`][bliptk.attribution.folder]), with ``--summary WORD`` a word's gallery.
``--method``'s choices and each method's own flags come from the registry."""

from __future__ import annotations

import glob
import sys
from dataclasses import fields
from pathlib import Path

from ..attribution.registry import METHODS, resolved_layer
from ..attribution.result import MapFileOptions
from ..captioning.options import FolderJobOptions
from ..core.decoding import DecodingOptions
from ..core.errors import InvalidOptionError, check_positive_int
from ..core.video import VideoOptions
from .arguments import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    figure_output,
    grid_arguments,
    load_model,
    model_arguments,
    model_tokenizer,
    one_line,
    option_arguments,
    options_from,
    save_figure,
    torch_module,
)

HELP = "draw why each caption token was chosen (Grad-CAM, occlusion...): a PNG grid, or a folder's explanations"
_FOLDER_JOB = ("recursive", "batch_size", "workers", "max_pixels", "resume")


def add_arguments(parser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="the image (or video) to explain; several, a folder or a pattern: a folder's job"
    )
    parser.add_argument("--out", required=True, help="PNG file to write; for a folder's job, the job's folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the --out PNG if it exists")
    model_arguments(parser, runtimes=("torch", "onnx"))
    titles = "; ".join(f"{method.name}: {method.title}{f' ({method.cost})' if method.cost else ''}" for method in METHODS.values())
    parser.add_argument("--method", default="gradcam", choices=list(METHODS), help=f"how the maps are made (default gradcam; {titles})")
    takers = [method.name for method in METHODS.values() if method.takes_layer]
    parser.add_argument(
        "--layer", type=int, default=None, help=f"decoder layer of {', '.join(takers)}, 0-based (default: each method's own)"
    )
    parser.add_argument("--caption", default=None, help="explain this caption, teacher-forced, instead of the model's own")
    parser.add_argument(
        "--contrast",
        action="append",
        default=[],
        metavar="WORD=FOIL",
        help="explain WORD of the caption against FOIL: log p(WORD) - log p(FOIL) (repeatable)",
    )
    option_arguments(parser, DecodingOptions, ("prompt", "max_new_tokens", "num_beams"), unset=("max_new_tokens", "num_beams"))
    option_arguments(parser, VideoOptions, ("num_frames",))
    seen: set[str] = set()
    for method in METHODS.values():  # each method's own options, one flag per field
        names = tuple(f.name for f in fields(method.options) if f.name not in seen)
        seen.update(names)
        option_arguments(parser, method.options, names)
    grid_arguments(parser)
    folder = parser.add_argument_group("a folder's job (several inputs, a folder or a pattern)")
    option_arguments(folder, FolderJobOptions, _FOLDER_JOB)
    option_arguments(folder, MapFileOptions)
    folder.add_argument("--summary", action="append", default=[], metavar="WORD", help="print and draw WORD's gallery (repeatable)")


def _contrast(args) -> dict[str, str]:
    pairs = {}
    for given in args.contrast:
        word, equals, foil = given.partition("=")
        if not equals or not word.strip() or not foil.strip():
            raise InvalidOptionError(
                f"--contrast {one_line(given)}: write WORD=FOIL, a word of the caption and the word it is explained against"
            )
        pairs[word.strip()] = foil.strip()
    return pairs


def _is_job(args) -> bool:
    if len(args.inputs) > 1:
        return True
    given = args.inputs[0]
    return Path(given).is_dir() or (glob.has_magic(given) and not Path(given).exists())


def run(args) -> int:
    check_positive_int("columns", args.columns)
    method = METHODS[args.method]
    settings = {f.name: getattr(args, f.name) for f in fields(method.options)}
    method.options(**settings)  # checked before the model loads
    for other in METHODS.values():  # another method's flag, given: it would do nothing
        for option in fields(other.options):
            if option.name not in settings and getattr(args, option.name) != option.default:
                flag = "--" + option.name.replace("_", "-")
                raise InvalidOptionError(f"{flag} applies to the {other.name} method, not {method.name}: add --method {other.name}")
    decoding = {name: getattr(args, name) for name in ("max_new_tokens", "num_beams") if getattr(args, name) is not None}
    if args.caption is not None and decoding:
        flags = " and ".join("--" + name.replace("_", "-") for name in decoding)
        raise InvalidOptionError(f"{flags} apply when explain captions the image itself; with --caption, that caption is explained")
    contrast = _contrast(args)
    if contrast:
        from ..attribution.explanation import foil_id  # the foils are checked against the vocabulary before the model loads

        tokenizer = model_tokenizer(args)
        for foil in contrast.values():
            foil_id(tokenizer, foil)
    if method.takes_layer:  # the layer is checked against the architecture (shapes only, no weights) before the model loads
        layers = torch_module("model.loading").architecture(args.model).config.text_config.num_hidden_layers
        resolved_layer(args.method, args.layer, layers)
    elif args.layer is not None:
        resolved_layer(args.method, args.layer, 0)
    if _is_job(args):
        return _explain_folder(args, settings, decoding, contrast)
    job_flags = [f"--{name.replace('_', '-')}" for name in ("resume", "recursive") if getattr(args, name)] + [
        f"--summary {w}" for w in args.summary
    ]
    job_flags += [
        f"--{option.name.replace('_', '-')}"
        for options in (FolderJobOptions, MapFileOptions)
        for option in fields(options)
        if option.name in (*_FOLDER_JOB, "map_dtype", "map_format") and getattr(args, option.name) not in (option.default, False)
    ]
    if job_flags:
        flags = " ".join(dict.fromkeys(job_flags))
        raise InvalidOptionError(f"{flags} apply to a folder's job (several inputs, a folder or a pattern), not to one image")
    return _explain_one(args, settings, decoding, contrast)


def _explain_one(args, settings: dict, decoding: dict, contrast: dict) -> int:
    from ..core.video import is_video, video_frames
    from ..model.attention import plot_attention_maps, plot_attention_overlays

    explanations = torch_module("attribution.explanation")
    [given] = args.inputs
    with figure_output(args) as out:
        video = is_video(given)
        image = video_frames(given, args.num_frames) if video else torch_module("core.preprocess").load_image(given)
        captioner = load_model(args, ("torch", "onnx"))
        explanation = explanations.explain(
            captioner,
            image,
            args.caption,
            method=args.method,
            layer=args.layer,
            prompt=args.prompt,
            contrast=contrast,
            **settings,
            **decoding,
        )
        if not explanation.tokens:
            raise InvalidOptionError(f"{one_line(given)}: the caption has no generated tokens to explain")
        if args.raw:
            figure = plot_attention_maps(explanation, columns=args.columns)
        else:
            figure = plot_attention_overlays(image[len(image) // 2] if video else image, explanation, columns=args.columns)
        made = {**explanation.provenance, "image": given}
        # The caption as given (or made), and the very tokens explained: [UNK] included, which the text drops.
        caption = args.caption if args.caption is not None else explanation.text
        save_figure(
            out,
            figure,
            {**made, "caption": caption, "text": explanation.text, "tokens": explanation.tokens, "token_ids": explanation.token_ids},
            _what(explanation),
        )
    print(f"{one_line(given)}: {explanation.text}\nwrote {one_line(str(out.path))}")
    return EXIT_OK


def _what(explanation) -> str:
    """What an explanation's figure shows, in its title: the method, its layer, the contrast."""
    layer = "" if explanation.layer is None else f", layer {explanation.layer}"
    contrast = "".join(f", {explanation.tokens[t]!r} against {foil!r}" for t, foil in explanation.contrast.items())
    return f"{explanation.name}{layer}{contrast}"


def _explain_folder(args, settings: dict, decoding: dict, contrast: dict) -> int:
    from ..captioning.folder import BatchStatus, expand_inputs

    folder_module = torch_module("attribution.folder")
    if args.caption is not None:
        raise InvalidOptionError("--caption explains one image's caption; a folder's job explains each input's own caption")
    if args.overwrite:
        raise InvalidOptionError(
            "--overwrite replaces one image's PNG; a folder's job is continued with --resume, or written to a new --out"
        )
    job = options_from(args, FolderJobOptions)
    maps = options_from(args, MapFileOptions)
    inputs = expand_inputs(args.inputs, job.recursive)  # nothing to explain: said before the model loads
    with folder_module.ExplanationOutput(args.out, job.resume) as output:  # checked and locked before the model loads
        captioner = load_model(args, ("torch", "onnx"))
        status = BatchStatus()
        request = dict(
            method=args.method,
            layer=args.layer,
            prompt=args.prompt,
            contrast=contrast,
            maps=maps,
            num_frames=args.num_frames,
            **settings,
            **decoding,
        )
        records = folder_module.explain_files(captioner, inputs, output, job=job, status=status, **request)
        for record in records:
            if record["error"]:
                print(f"bliptk: error: {one_line(record['path'])}: {one_line(record['error']['message'])}", file=sys.stderr, flush=True)
        print(
            f"bliptk: {status.captioned} explained, {status.failed} failed, {status.skipped} already done (of {status.total})"
            f"{', interrupted' if status.interrupted else ''}; records and maps in {one_line(args.out)}",
            file=sys.stderr,
        )
        for word in args.summary:  # while the folder is still this job's alone, of this job's explanations
            made = folder_module.job_record_options(captioner, **request)
            _summary(output, word, folder_module.load_explanations(args.out, made))
    if status.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if status.failed else EXIT_OK


def _summary(output, word: str, explanations: list) -> None:
    """Print a word's summary over this job's explanations and draw its gallery into the job's folder."""
    words = torch_module("attribution.words")
    summary = words.word_maps(explanations, word)
    print(summary)
    provenance = {**explanations[0].provenance, "word": word, "occurrences": len(summary.occurrences)}
    what = f"{word!r} in {len(summary.occurrences)} captions, {explanations[0].name}: the mean map, then the most concentrated"
    out = output.file(f"summary-{''.join(c if c.isalnum() else '_' for c in word)}.png")
    save_figure(out, words.plot_word_gallery(summary), provenance, what)
    print(f"wrote {one_line(str(out.path))}")
