"""Stage `zeroshot`: df/cd heads of the pre-trained model, logits for every split, core estimates."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--descriptions", default="data/descriptions.json")
    p.add_argument("--out", default="data/zeroshot")
    args = p.parse_args()
    from drm import steps

    params, base = cli.load(args)
    return "zeroshot", steps.zeroshot(params, base, args.descriptions, args.out, cli.progress_enabled(args))


if __name__ == "__main__":
    cli.run(main)
