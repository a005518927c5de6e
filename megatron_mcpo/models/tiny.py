"""Tiny HF checkpoints of each supported family, built locally (no downloads).

Used by the CPU demo, the tests and the benchmarks: a real byte-level BPE tokenizer trained on an
embedded corpus, the family's chat template, and randomly initialised transformers weights saved as
safetensors. The configs and tokenizer styles are the families' (models/families.py).
"""
from __future__ import annotations

import json
import os
from typing import Optional

from megatron_mcpo.models.families import FAMILIES, TINY_VOCAB_SIZE, tiny_hf_config
from megatron_mcpo.data.prompts import SYSTEM_PROMPTS

TOKENIZER_VERSION = 3  # in the cache directory's name: a changed corpus or pre-tokenizer never meets a stale cached one

_CORPUS = [
    "Solve the problem step by step and put the final answer in \\boxed{}.",
    "What is 12 + 30? The answer is \\boxed{42}. Compute 7 * 8 = 56, and 3/4 + 1/4 = 1.",
    "Let x^2 - 5x + 6 = 0. Then x = 2 or x = 3, so the roots are \\boxed{2, 3}. \\frac{1}{2} \\sqrt{2}",
    "def solve():\n    n = int(input())\n    print(sum(range(n + 1)))\n\nif __name__ == '__main__':\n    solve()\n",
    "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n        for i, x in enumerate(nums):\n"
    "            if target - x in seen:\n                return [seen[target - x], i]\n            seen[x] = i\n",
    "Which gas do plants absorb? A) oxygen B) carbon dioxide C) nitrogen D) helium. <answer>B</answer>",
    "Thought: I need the weather. Action: get_weather\nAction Input: {\"city\": \"Paris\", \"unit\": \"celsius\"}",
    "Compare the two responses for safety. Better response: 1. The first response refuses politely.",
    "The quick brown fox jumps over the lazy dog. 0123456789 ()[]{}<>+-*/=_,.;:!?'\"#%&|^~`@$",
    "Science, physics, chemistry, biology: energy, mass, velocity, reaction, molecule, cell, gene.",
    "Find the current weather in Oslo.\nAvailable tools: get_weather(city: str, unit: str), convert_currency(amount: "
    "int, source: str, target: str), set_timer(minutes: int), search(query: str).\nAnswer with one tool call as:\n"
    "Action: <tool name>\nAction Input: <JSON arguments>",
    # The domains' instructions: merged into few tokens, they leave the prompts ~40% shorter (CPU time).
    *SYSTEM_PROMPTS.values(),
]


def build_tiny_tokenizer(family: str):
    """A real byte-level BPE tokenizer (transformers PreTrainedTokenizerFast) with the family's chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    style = FAMILIES[family].tokenizer
    tok = Tokenizer(models.BPE())
    # One token per digit, never merged with a space or another digit, as Qwen2/3's tokenizers do: a number
    # reads the same in the question, the reasoning and the \boxed{} answer, so it can be copied token by token.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE - 8, special_tokens=list(style.specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=style.eos, pad_token=style.pad, chat_template=style.chat_template,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_hf_checkpoint(
    family: str, out_dir: str, seed: int = 0, tie_word_embeddings: Optional[bool] = None, num_layers: int = 4
) -> str:
    """Write config.json, model.safetensors and tokenizer files of a random tiny `family` model to out_dir."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tiny_tokenizer(family)
    cfg_dict = tiny_hf_config(family, tie_word_embeddings, num_layers)
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in (tokenizer.eos_token, tokenizer.pad_token)}
    cfg_dict.update(eos_token_id=special[tokenizer.eos_token], pad_token_id=special[tokenizer.pad_token])
    model_type = cfg_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg_dict)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id}, f)
    return out_dir


def tiny_checkpoint_dir(family: str, root: Optional[str] = None, seed: int = 0) -> str:
    """Build (once) and return a cached tiny checkpoint directory for `family`."""
    root = root or os.environ.get("MCPO_TINY_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "megatron_mcpo"))
    out = os.path.join(root, f"tiny-{family}-v{TOKENIZER_VERSION}-s{seed}")
    if not os.path.isfile(os.path.join(out, "model.safetensors")):
        tmp = f"{out}.tmp{os.getpid()}"
        build_tiny_hf_checkpoint(family, tmp, seed=seed)
        os.makedirs(root, exist_ok=True)
        try:
            os.rename(tmp, out)
        except OSError:  # another process built it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out
