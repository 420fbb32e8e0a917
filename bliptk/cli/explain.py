"""``bliptk explain``: why each caption token was chosen, by a method of the registry
([`bliptk.attribution.registry`][bliptk.attribution.registry]), as a PNG grid. ``--method``'s choices
and each method's own flags come from the registry."""

from __future__ import annotations

from dataclasses import fields

from ..attribution.registry import METHODS, resolved_layer
from ..core.decoding import DecodingOptions
from ..core.errors import InvalidOptionError, check_positive_int
from ..core.video import VideoOptions
from .arguments import (
    EXIT_OK,
    figure_output,
    grid_arguments,
    load_model,
    model_arguments,
    one_line,
    option_arguments,
    out_arguments,
    save_figure,
    torch_module,
)

HELP = "draw why each caption token was chosen (Grad-CAM, relevance...), as a PNG grid"


def add_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image (or video) to caption and explain")
    out_arguments(parser, "PNG file to write")
    model_arguments(parser)
    titles = "; ".join(f"{method.name}: {method.title}{f' ({method.cost})' if method.cost else ''}" for method in METHODS.values())
    parser.add_argument("--method", default="gradcam", choices=list(METHODS), help=f"how the maps are made (default gradcam; {titles})")
    takers = [method.name for method in METHODS.values() if method.takes_layer]
    parser.add_argument(
        "--layer", type=int, default=None, help=f"decoder layer of {', '.join(takers)}, 0-based (default: each method's own)"
    )
    parser.add_argument("--caption", default=None, help="explain this caption, teacher-forced, instead of the model's own")
    option_arguments(parser, DecodingOptions, ("prompt", "max_new_tokens", "num_beams"), unset=("max_new_tokens", "num_beams"))
    option_arguments(parser, VideoOptions, ("num_frames",))
    seen: set[str] = set()
    for method in METHODS.values():  # each method's own options, one flag per field
        names = tuple(f.name for f in fields(method.options) if f.name not in seen)
        seen.update(names)
        option_arguments(parser, method.options, names)
    grid_arguments(parser)


def run(args) -> int:
    from ..core.video import is_video, video_frames
    from ..model.attention import plot_attention_maps, plot_attention_overlays

    explanations = torch_module("attribution.explanation")
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
    # The layer is checked against the architecture (shapes only, no weights) before the model loads.
    layers = torch_module("model.loading").architecture(args.model).config.text_config.num_hidden_layers
    resolved_layer(args.method, args.layer, layers)
    with figure_output(args) as out:
        video = is_video(args.image)
        image = video_frames(args.image, args.num_frames) if video else torch_module("core.preprocess").load_image(args.image)
        captioner = load_model(args)
        explanation = explanations.explain(
            captioner, image, args.caption, method=args.method, layer=args.layer, prompt=args.prompt, **settings, **decoding
        )
        if not explanation.tokens:
            raise InvalidOptionError(f"{one_line(args.image)}: the caption has no generated tokens to explain")
        if args.raw:
            figure = plot_attention_maps(explanation, columns=args.columns)
        else:
            figure = plot_attention_overlays(image[len(image) // 2] if video else image, explanation, columns=args.columns)
        made = {**explanation.provenance, "image": args.image}
        # The caption as given (or made), and the very tokens explained: [UNK] included, which the text drops.
        caption = args.caption if args.caption is not None else explanation.text
        save_figure(out, figure, {**made, "caption": caption, "tokens": explanation.tokens, "token_ids": explanation.token_ids})
    print(f"{one_line(args.image)}: {explanation.text}\nwrote {one_line(str(out.path))}")
    return EXIT_OK
