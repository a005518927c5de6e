"""HF safetensors checkpoint -> Megatron dist_checkpointing checkpoint (loads at any TP/PP).

    python tools/convert_hf_to_megatron.py --hf-dir D --out-dir O [--tp N --pp M --dtype bf16|fp32]

Streams tensor by tensor in one process (no model is built): peak memory is about one tensor.
"""
import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hf-dir", required=True, help="HF checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--out-dir", required=True, help="new (empty) output directory")
    p.add_argument("--tp", type=int, default=1, help="TP layout the chunks are cut for (checked against the model)")
    p.add_argument("--pp", type=int, default=1, help="PP size checked against the number of layers")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="stored dtype; match the run's model.params_dtype (default fp32, as training)")
    args = p.parse_args(argv)
    from megatron_mcpo.weights.dist_ckpt import convert_hf_to_megatron

    try:
        summary = convert_hf_to_megatron(args.hf_dir, args.out_dir, tp=args.tp, pp=args.pp, dtype=args.dtype)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['family']} checkpoint ({summary['layers']} layers, {summary['tensors']} tensors stored as "
          f"{summary['keys']} layer-stacked keys, {summary['dtype']}) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
