"""Stage `pretrain`: contrastively pre-train the embedded CLIP on the world's caption corpus."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--world", default="data/world")
    p.add_argument("--out", default="models/pretrained")
    args = p.parse_args()
    from drm import steps

    params, base = cli.load(args)
    return "pretrain", steps.pretrain(params, base, args.world, args.out, progress=cli.progress_enabled(args))


if __name__ == "__main__":
    cli.run(main)
