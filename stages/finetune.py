"""Stage `finetune`: train one method with one seed; predict with each WiSE-FT alpha."""
from drm import cli


def main():
    p = cli.parser(__doc__)
    p.add_argument("--method", required=True, help="a name defined under `methods` in params.yaml")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--zeroshot", default="data/zeroshot")
    p.add_argument("--out", default=None, help="default: runs/{method}-s{seed}")
    args = p.parse_args()
    from drm.config import load_params
    from drm.datasets import open_source
    from drm.errors import ConfigError
    from drm.finetune import run_finetune
    from drm.models import load_pretrained
    from drm.zeroshot import load_heads

    params = load_params(args.params)
    if args.method not in params.methods:
        raise ConfigError(f"unknown method {args.method!r}; defined under `methods`: {sorted(params.methods)}")
    base = cli.base_dir(args)
    source = open_source(params.data, base)
    heads = load_heads(args.zeroshot)
    model, train_tf, eval_tf, _ = load_pretrained(params.model.name, params.model.pretrained, "cpu", base)
    out = args.out or f"runs/{args.method}-s{args.seed}"
    info = run_finetune(model, heads, source, (train_tf, eval_tf), args.method, params.methods[args.method],
                        params.finetune, params.wise.alphas, args.seed, args.zeroshot, out,
                        params.data.num_workers, cli.progress_enabled(args))
    print(f"finetune: {info}")


if __name__ == "__main__":
    cli.run(main)
