"""Stage `zeroshot`: df/cd heads of the pre-trained model, logits for every split, core estimates."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--descriptions", default="data/descriptions.json")
    p.add_argument("--out", default="data/zeroshot")
    args = p.parse_args()
    from drm.config import load_params
    from drm.datasets import open_source
    from drm.describe import load_descriptions
    from drm.models import load_pretrained
    from drm.train_utils import resolve_device
    from drm.zeroshot import run_zeroshot

    params = load_params(args.params)
    base = cli.base_dir(args)
    source = open_source(params.data, base)
    descriptions = load_descriptions(args.descriptions, source.classnames)
    device = str(resolve_device(params.zeroshot.device))
    model, _, eval_tf, tokenizer = load_pretrained(params.model.name, params.model.pretrained, device, base)
    summary = run_zeroshot(model, tokenizer, eval_tf, source, descriptions, params.zeroshot, args.out,
                           device, params.data.num_workers, cli.progress_enabled(args))
    print(f"zeroshot: {summary}")


if __name__ == "__main__":
    cli.run(main)
