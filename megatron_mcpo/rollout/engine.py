"""The rollout engine protocol: generate G samples per prompt, take new weights, sleep/wake.

Implementations (built by `megatron_mcpo.rollout.factory.make_engine`, keyed by `rollout.engine`):
`vllm_engine.VLLMEngine` (the only module importing vllm) and `hf_engine.HFEngine` (transformers, in-process).

Log-prob modes (vLLM's names, `logprobs_mode`): "raw_logprobs" = log-softmax of the model's logits;
"processed_logprobs" = log-softmax after temperature scaling and top-k/top-p masking (the distribution
actually sampled from).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Protocol, Sequence, Union

import torch

from megatron_mcpo.config import SamplingSpec  # the engines' sampling argument (one type for rollout and eval)

# A prompt: token ids, plain text, or chat messages ([{"role": ..., "content": ...}], templated by the
# tokenizer's chat template with the generation prompt appended).
Prompt = Union[list[int], str, list[dict]]


class EngineDiedError(RuntimeError):
    """A rollout engine died or hung; the message names it. The run cannot continue on this rank."""


def prompt_token_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt; chat messages go through the tokenizer's chat template."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if prompt and isinstance(prompt[0], dict):
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)
    if not all(isinstance(t, int) for t in prompt):
        raise TypeError("rollout: a prompt is token ids, a string or a list of chat messages")
    return list(prompt)


@dataclass
class Sample:
    prompt_ids: list[int]
    token_ids: list[int]  # the response
    logprobs: list[float]  # log-prob of each response token, in the engine's logprobs_mode
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens)


LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")


class RolloutEngine(Protocol):
    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt as the engine feeds it (chat messages through the chat template)."""

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec) -> list[list[Sample]]:
        """For each prompt, `sampling.n` samples."""

    def set_sampling_seed(self, seed: Optional[int]) -> None:
        """Seed the following `generate` calls per (seed, prompt index, sample); None: unseeded."""

    def score(self, sequences: Sequence[list[int]]) -> list[list[float]]:
        """log p(x_t | x_<t) for t >= 1 of each given token sequence (length len-1)."""

    def update_weights(self, buckets: Iterable[list[tuple[str, torch.Tensor]]]) -> int:
        """Load full HF-named tensors, bucket by bucket (a bucket never splits a fused engine module);
        returns the bytes handed to the engine."""

    def sleep(self, level: int = 1) -> None: ...

    def wake_up(self, tags: Optional[list[str]] = None) -> None: ...

    def shutdown(self) -> None: ...
