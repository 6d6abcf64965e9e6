"""Stage `pretrain`: contrastively pre-train the embedded CLIP on the world's caption corpus."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--world", default="data/world")
    p.add_argument("--out", default="models/pretrained")
    args = p.parse_args()
    from drm.config import load_params
    from drm.datasets.world import WorldSource
    from drm.pretrain import pretrain
    from drm.tracking import live_logger

    params = load_params(args.params)
    source = WorldSource.open(args.world)
    split = source.load("pretrain")
    with live_logger("runs/pretrain/live") as live:
        summary = pretrain(params.pretrain, split, args.out, source.image_size,
                           progress=cli.progress_enabled(args), live=live)
    print(f"pretrain: {summary}")


if __name__ == "__main__":
    cli.run(main)
