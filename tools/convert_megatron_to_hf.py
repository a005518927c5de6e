"""Megatron dist_checkpointing checkpoint -> HF safetensors + config + tokenizer files.

    python tools/convert_megatron_to_hf.py --megatron-dir O --out-dir H [--max-shard-gb 2]

Works on a converted checkpoint or one the trainer saved (any TP/PP; a save directory resolves to its
latest iteration). Every file is first checked against the checksums recorded at save. Streams one
layer at a time; the output loads in transformers and vLLM.
"""
import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--megatron-dir", required=True, help="dist checkpoint directory (or a trainer save dir)")
    p.add_argument("--out-dir", required=True, help="output HF directory")
    p.add_argument("--max-shard-gb", type=float, default=2.0, help="largest safetensors shard")
    args = p.parse_args(argv)
    from megatron_mcpo.training.ckpt_files import CheckpointError, latest_checkpoint
    from megatron_mcpo.weights.dist_ckpt import convert_megatron_to_hf

    try:
        ckpt = latest_checkpoint(args.megatron_dir) or args.megatron_dir
        summary = convert_megatron_to_hf(ckpt, args.out_dir, max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
    except (ValueError, KeyError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['family']} HF checkpoint ({len(summary['files'])} file(s), {summary['bytes'] / 1e6:.1f} MB, {summary['dtype']}) to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
