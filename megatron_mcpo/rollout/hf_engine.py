"""An in-process HF transformers rollout engine (`rollout.engine: hf`), for machines without vLLM.

Generation is our own sampling loop over a left-padded batch with a KV cache: each prompt is prefilled
once and its cache repeated for the n samples, finished rows are dropped from the batch as they end, and
every random draw comes from the engine's own `torch.Generator` (seeded per engine, so a run repeats
exactly). The sampler follows vLLM's: greedy when temperature is 0; otherwise logits / T, then top-k,
then top-p (smallest set of tokens with mass >= p), then an exponential race (`argmax p / q`,
q ~ Exp(1)), which draws exactly from the filtered distribution. The log-prob kept for each sampled
token follows vLLM's `logprobs_mode` (rollout/engine.py). EOS tokens end a sample and stay in its
token ids; a stop string ends it after the token that completes it and is cut from the text (vLLM's
defaults). Weights come from the refit buckets (full HF-named tensors) copied in place.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

from megatron_mcpo.rollout.engine import LOGPROBS_MODES, Prompt, Sample, SamplingSpec, prompt_token_ids
from megatron_mcpo.rollout.memory import StorageOffload

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_GREEDY_EPS = 1e-5  # vLLM's: a temperature below this is greedy


_SDPA_GQA = "mcpo_sdpa_gqa"


def sdpa_gqa_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, but with the key/value heads shared inside SDPA (`enable_gqa`) also
    when a mask is given: transformers then copies them num_heads / num_kv_heads times per call, i.e.
    the whole KV cache at every decoding step of a left-padded batch. Same math (SDPA shares the heads
    the same way). query [b, h, q, d], key/value [b, h_kv, k, d] -> ([b, q, h, d], None)."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=query.shape[2] > 1 and attention_mask is None and causal, enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def _attention_implementation(device: torch.device) -> str:
    """The GQA-sharing SDPA on CPU (a third of the decode attention's time there); transformers' own on
    GPU, where a masked GQA call may leave the fused kernels."""
    if device.type != "cpu":
        return "sdpa"
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(_SDPA_GQA, sdpa_gqa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(_SDPA_GQA, sdpa_mask)
    return _SDPA_GQA


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) what top-k (k > 0) and then top-p (p < 1) exclude. logits: [B, V] -> [B, V].
    top-p keeps the largest tokens whose mass reaches p: with probabilities sorted ascending, a token is
    dropped when the cumulative mass up to and including it is <= 1 - p (the largest is always kept)."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1)
        drop = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1.0 - top_p
        drop[:, -1] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


class HFEngine:
    """A transformers causal LM behind the RolloutEngine protocol, on `device` (CPU or one GPU)."""

    def __init__(self, model_dir: str, *, seed: int = 0, dtype: str = "fp32", device="cpu",
                 logprobs_mode: str = "raw_logprobs", max_model_len: Optional[int] = None, max_num_seqs: int = 256):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"rollout: logprobs_mode '{logprobs_mode}' is not one of {list(LOGPROBS_MODES)}")
        if dtype not in _DTYPES:
            raise ValueError(f"rollout dtype '{dtype}' is not one of {sorted(_DTYPES)}")
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=_DTYPES[dtype],
                                                          attn_implementation=_attention_implementation(self.device))
        self.model.to(self.device).eval().requires_grad_(False)
        self.model_dtype = _DTYPES[dtype]
        self.logprobs_mode = logprobs_mode
        self.max_model_len = max_model_len
        self.max_num_seqs = max_num_seqs
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._call_seed: Optional[int] = None
        gen_eos = self.model.generation_config.eos_token_id
        eos = set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = eos
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(eos)
        # Every parameter name, tied ones included (a tied lm_head may arrive under either name); a
        # refit of any alias refreshes the one tensor they share.
        self._params = dict(self.model.named_parameters(remove_duplicate=False))
        self._canonical = {n: next(m for m, q in self._params.items() if q is p) for n, p in self._params.items()}
        self._offload = StorageOffload(list(self.model.parameters()))
        self._missing: set[str] = set()  # parameters discarded by sleep(level=2), awaiting a refit

    # ---------------------------------------------------------------- generation
    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return prompt_token_ids(self.tokenizer, prompt)

    def set_sampling_seed(self, seed: Optional[int]) -> None:
        """Seed the following `generate` calls: each call restarts the generator from `seed`, so the same
        prompts with the same weights give the same samples whatever the engine did before (a resumed run
        repeats the uninterrupted one). None: the engine's running generator."""
        self._call_seed = None if seed is None else int(seed)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingSpec) -> list[list[Sample]]:
        if sampling.n < 1 or sampling.max_tokens < 1:
            raise ValueError(f"rollout: n ({sampling.n}) and max_tokens ({sampling.max_tokens}) must be >= 1")
        self._check_weights()
        if self._call_seed is not None:
            self.generator.manual_seed(self._call_seed)
        ids = [self.prompt_ids(p) for p in prompts]
        per_chunk = max(1, self.max_num_seqs // sampling.n)
        out: list[list[Sample]] = []
        for start in range(0, len(ids), per_chunk):
            out += self._generate_chunk(ids[start : start + per_chunk], sampling)
        return out

    def _generate_chunk(self, ids: list[list[int]], sp: SamplingSpec) -> list[list[Sample]]:
        from transformers import DynamicCache

        limits = [self._max_new_tokens(len(p), sp.max_tokens) for p in ids]
        width = max(len(p) for p in ids)
        tokens = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, p in enumerate(ids):  # left padding: every row's next token goes at the same column
            tokens[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True).logits[:, -1, :]
        n = sp.n
        cache.batch_repeat_interleave(n)  # the n samples of a prompt share its prefill
        logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        next_pos = positions[:, -1:].repeat_interleave(n, 0) + 1
        rows = torch.arange(len(ids) * n)  # the sample each live batch row belongs to
        gen: list[list[int]] = [[] for _ in rows]
        lps: list[list[float]] = [[] for _ in rows]
        reasons: list[Optional[str]] = [None] * len(rows)
        texts: list[Optional[str]] = [None] * len(rows)
        stop_window = max((len(s) for s in sp.stop), default=0) + 8  # tokens: a stop string spans fewer
        while True:
            token, lp = self._sample(logits.float(), sp)
            keep = []
            for j, (r, t, v) in enumerate(zip(rows.tolist(), token.tolist(), lp.tolist())):
                gen[r].append(t)
                lps[r].append(v)
                if t in self.eos_ids:
                    reasons[r] = "stop"
                elif sp.stop and (text := self._stopped_text(gen[r], sp.stop, stop_window)) is not None:
                    reasons[r], texts[r] = "stop", text
                elif len(gen[r]) >= limits[r // n]:
                    reasons[r] = "length"
                else:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(rows):  # drop finished rows from the batch and the cache
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                rows, token, mask, next_pos = rows[keep], token[idx], mask[idx], next_pos[idx]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                                past_key_values=cache, use_cache=True).logits[:, -1, :]
            next_pos = next_pos + 1
        result = []
        for i, p in enumerate(ids):
            group = []
            for r in range(i * n, (i + 1) * n):
                text = texts[r] if texts[r] is not None else self.tokenizer.decode(gen[r], skip_special_tokens=True)
                group.append(Sample(list(p), gen[r], lps[r], text, reasons[r]))
            result.append(group)
        return result

    def _sample(self, logits: torch.Tensor, sp: SamplingSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens [B] and their log-probs [B] (fp32 logits [B, V]) in the engine's logprobs_mode."""
        raw = torch.log_softmax(logits, dim=-1)
        if sp.temperature < _GREEDY_EPS:
            token = logits.argmax(dim=-1)
            processed = raw  # vLLM: greedy rows are neither scaled nor filtered
        else:
            processed = torch.log_softmax(filter_logits(logits / sp.temperature, sp.top_k, sp.top_p), dim=-1)
            q = torch.empty_like(processed).exponential_(generator=self.generator)
            token = (processed.exp() / q).argmax(dim=-1)
        chosen = raw if self.logprobs_mode == "raw_logprobs" else processed
        return token, chosen.gather(-1, token[:, None])[:, 0]

    def _stopped_text(self, gen: list[int], stops: list[str], window: int) -> Optional[str]:
        """The text before the first stop string once one has appeared (checked on the newest tokens)."""
        if not any(s in self.tokenizer.decode(gen[-window:], skip_special_tokens=True) for s in stops):
            return None
        text = self.tokenizer.decode(gen, skip_special_tokens=True)
        return text[: min(text.find(s) for s in stops if s in text)]

    def _max_new_tokens(self, prompt_len: int, max_tokens: int) -> int:
        if self.max_model_len is None:
            return max_tokens
        if prompt_len >= self.max_model_len:
            raise ValueError(f"rollout: a prompt of {prompt_len} tokens leaves no room in max_model_len={self.max_model_len}")
        return min(max_tokens, self.max_model_len - prompt_len)

    @torch.no_grad()
    def score(self, sequences: Sequence[list[int]]) -> list[list[float]]:
        """log p(x_t | x_<t), t >= 1, of given sequences (raw log-softmax, no sampling processors)."""
        self._check_weights()
        out: list[list[float]] = []
        for start in range(0, len(sequences), self.max_num_seqs):
            chunk = [list(s) for s in sequences[start : start + self.max_num_seqs]]
            width = max(len(s) for s in chunk)
            tokens = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, s in enumerate(chunk):  # right padding: positions start at 0 in every row
                tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[i, : len(s)] = 1
            tokens, mask = tokens.to(self.device), mask.to(self.device)
            logits = self.model(input_ids=tokens, attention_mask=mask).logits[:, :-1].float()
            lp = torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None])[..., 0].cpu()
            out += [lp[i, : len(s) - 1].tolist() for i, s in enumerate(chunk)]
        return out

    # ---------------------------------------------------------------- weights
    @torch.no_grad()
    def update_weights(self, buckets: Iterable[list[tuple[str, torch.Tensor]]]) -> int:
        """Copy full HF-named tensors into the model's parameters in place; returns the bytes copied."""
        copied = 0
        for bucket in buckets:
            for name, tensor in bucket:
                param = self._params.get(name)
                if param is None:
                    raise KeyError(f"rollout: the HF engine's model has no parameter '{name}'")
                if tuple(param.shape) != tuple(tensor.shape):
                    raise ValueError(f"rollout: '{name}' has shape {tuple(tensor.shape)}, the model's is {tuple(param.shape)}")
                param.copy_(tensor.to(dtype=param.dtype))
                copied += param.nbytes
                self._missing.discard(self._canonical[name])
        return copied

    def _check_weights(self) -> None:
        if self._offload.offloaded:
            raise RuntimeError("rollout: the HF engine is asleep; call wake_up() first")
        if self._missing:
            raise RuntimeError(f"rollout: {len(self._missing)} weights were discarded by sleep(level=2) and not "
                               f"refit since (e.g. '{sorted(self._missing)[0]}')")

    # ---------------------------------------------------------------- memory
    def sleep(self, level: int = 1) -> None:
        """Free the weights' device memory (no KV cache outlives a generate call): level 1 keeps a host
        copy, level 2 discards them (a refit must follow the wake-up). On CPU there is nothing to free."""
        if level not in (1, 2):
            raise ValueError(f"rollout: sleep level must be 1 or 2, got {level}")
        if self.device.type == "cpu":
            return
        self._offload.offload(keep=level == 1)
        if level == 2:
            self._missing = set(self._canonical.values())
        torch.cuda.empty_cache()

    def wake_up(self, tags: Optional[list[str]] = None) -> None:
        """Re-take the weights' memory ("weights" tag; "kv_cache" needs nothing: it lives per call)."""
        if self.device.type == "cpu" or not self._offload.offloaded or (tags is not None and "weights" not in tags):
            return
        self._offload.reload()

    def shutdown(self) -> None:
        self.model = None
        self._params = {}
