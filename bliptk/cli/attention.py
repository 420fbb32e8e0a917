"""``bliptk attention``: where each caption token looked (the page's cross-attention), as a PNG grid."""

from __future__ import annotations

from ..core.decoding import DecodingOptions
from ..core.errors import InvalidOptionError, check_positive_int
from .arguments import (
    EXIT_OK,
    check_prompts,
    figure_output,
    grid_arguments,
    load_model,
    model_arguments,
    one_line,
    option_arguments,
    options_from,
    out_arguments,
    save_figure,
)

HELP = "draw where each caption token looked, as a PNG grid"


def add_arguments(parser) -> None:
    parser.add_argument("image", metavar="IMAGE", help="the image to caption")
    out_arguments(parser, "PNG file to write")
    model_arguments(parser)
    option_arguments(parser, DecodingOptions, ("prompt", "max_new_tokens"))
    parser.add_argument(
        "--layer", type=int, nargs="+", default=[-1], help="decoder layer(s), averaged; negative counts from the end (default -1)"
    )
    parser.add_argument("--heads", default="mean", help='"mean" (default), "max", or a head index')
    grid_arguments(parser)


def run(args) -> int:
    from ..core.preprocess import load_image
    from ..model.attention import plot_attention_maps, plot_attention_overlays

    heads = int(args.heads) if args.heads.lstrip("-").isdigit() else args.heads
    options = options_from(args)
    check_prompts(args, options)
    check_positive_int("columns", args.columns)
    with figure_output(args) as out:
        image = load_image(args.image)
        captioner = load_model(args)
        caption = captioner.caption_features(captioner.encode_image(image), options, return_attention=True)[0]
        if not caption.token_ids:
            raise InvalidOptionError(f"{one_line(args.image)}: the caption has no generated tokens to draw")
        map_options = {"layer": args.layer, "heads": heads}
        if args.raw:
            figure = plot_attention_maps(caption, columns=args.columns, **map_options)
        else:
            figure = plot_attention_overlays(image, caption, columns=args.columns, **map_options)
        made = {**captioner.provenance(), "options": options.as_dict(), **map_options, "image": args.image}
        layers = ", ".join(map(str, args.layer))
        what = f"cross-attention, layer{'s' if len(args.layer) > 1 else ''} {layers}, heads {args.heads}"
        save_figure(out, figure, {**made, "caption": caption.text, "tokens": caption.tokens, "token_ids": caption.token_ids}, what)
    print(f"{one_line(args.image)}: {caption.text}\nwrote {one_line(str(out.path))}")
    return EXIT_OK
