"""The in-process HF transformers engine on CPU (tiny Qwen3, fp32): seeded sampling, the vLLM-style
sampler and log-prob modes against a direct HF forward, stop strings / max tokens / EOS, scoring,
refit from HF-named tensors, sleep/wake (a no-op on CPU; GPU: tests/gpu/test_hf_colocated.py)."""
import pytest
import torch

from megatron_mcpo.rollout.engine import SamplingSpec

FAMILY = "qwen3"
PROMPTS = [[{"role": "user", "content": "What is 12 + 30?"}], [5, 17, 99, 240, 7], "The quick brown fox"]


@pytest.fixture(scope="module")
def engine(tiny_dirs):
    from megatron_mcpo.rollout.hf_engine import HFEngine

    return HFEngine(tiny_dirs[FAMILY], seed=0, max_model_len=256)


@pytest.fixture(scope="module")
def reference(tiny_dirs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dirs[FAMILY], dtype=torch.float32).eval()


def _logits(model, seq):
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0].double()


def test_seeded_reproducible_and_samples_differ(tiny_dirs, engine):
    from megatron_mcpo.rollout.hf_engine import HFEngine

    sp = SamplingSpec(n=3, temperature=1.0, max_tokens=6)
    twin = HFEngine(tiny_dirs[FAMILY], seed=0, max_model_len=256)
    other = HFEngine(tiny_dirs[FAMILY], seed=1, max_model_len=256)
    first = HFEngine(tiny_dirs[FAMILY], seed=0, max_model_len=256)
    a, b, c = (e.generate(PROMPTS, sp) for e in (first, twin, other))
    ids = lambda out: [[s.token_ids for s in g] for g in out]  # noqa: E731
    assert ids(a) == ids(b) and [[s.logprobs for s in g] for g in a] == [[s.logprobs for s in g] for g in b]
    assert ids(a) != ids(c)  # another engine seed, other samples
    assert len({tuple(s.token_ids) for s in a[1]}) > 1  # the n samples of one prompt differ
    # a sampling seed makes every following call repeat, whatever the engine generated before
    first.set_sampling_seed(11)
    d = first.generate(PROMPTS, sp)
    first.generate(PROMPTS, sp)
    assert ids(first.generate(PROMPTS, sp)) == ids(d) != ids(a)
    expected = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n"  # ChatML template
    assert engine.tokenizer.decode(a[0][0].prompt_ids) == expected and a[1][0].prompt_ids == PROMPTS[1]


@pytest.mark.parametrize("mode", ["raw_logprobs", "processed_logprobs"])
def test_logprobs_modes_match_a_direct_forward(tiny_dirs, reference, mode):
    """Each sampled token's log-prob against a full-sequence HF forward (float64 of fp32 logits,
    tolerance 1e-4): raw = log_softmax(z); processed = log_softmax of z/T after top-k then top-p."""
    from megatron_mcpo.rollout.hf_engine import HFEngine, filter_logits

    eng = HFEngine(tiny_dirs[FAMILY], seed=3, logprobs_mode=mode)
    sp = SamplingSpec(n=4, temperature=0.7, top_k=50, top_p=0.9, max_tokens=8)
    for group in eng.generate(PROMPTS, sp):
        for s in group:
            z = _logits(reference, s.prompt_ids + s.token_ids)[len(s.prompt_ids) - 1 : -1]
            if mode == "raw_logprobs":
                lp = torch.log_softmax(z, -1)
            else:
                lp = torch.log_softmax(filter_logits(z / 0.7, 50, 0.9), -1)
                assert torch.isfinite(lp.gather(-1, torch.tensor(s.token_ids)[:, None])).all()  # sampled inside the filter
            want = lp.gather(-1, torch.tensor(s.token_ids)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float64), want, atol=1e-4, rtol=0)


def test_gqa_sharing_attention_equals_transformers_sdpa_on_a_left_padded_batch(engine, reference):
    """The engine's CPU attention (enable_gqa under a mask) against transformers' own SDPA (which copies
    the key/value heads): prefill and a cached decode step of a left-padded batch, fp32, 1e-5."""
    from transformers import DynamicCache

    assert engine.model.config._attn_implementation == "mcpo_sdpa_gqa"
    assert engine.model.config.num_key_value_heads < engine.model.config.num_attention_heads
    tokens = torch.tensor([[0, 0, 0, 5, 17, 99], [3, 8, 21, 7, 240, 11]])
    mask = (torch.arange(6) >= torch.tensor([[3], [0]])).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    step = torch.tensor([[42], [9]])
    outs = []
    with torch.no_grad():
        for model in (engine.model, reference):
            cache = DynamicCache(config=model.config)
            first = model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache).logits
            second = model(input_ids=step, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1),
                           position_ids=positions[:, -1:] + 1, past_key_values=cache).logits
            outs.append((first[mask.bool()], second))
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_filter_logits_top_k_and_top_p_by_hand():
    z = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype=torch.float64))
    from megatron_mcpo.rollout.hf_engine import filter_logits

    assert torch.isfinite(filter_logits(z, 2, 1.0)).tolist() == [[True, True, False, False, False]]
    # top-p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so 0.15 is needed too; 0.9 needs 0.1 as well
    assert torch.isfinite(filter_logits(z, -1, 0.8)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(filter_logits(z, -1, 0.9)).tolist() == [[True, True, True, True, False]]
    assert torch.isfinite(filter_logits(z, -1, 0.01)).tolist() == [[True, False, False, False, False]]


def test_top_k_one_equals_greedy_and_greedy_is_the_argmax(engine, reference):
    greedy = engine.generate(PROMPTS, SamplingSpec(n=1, temperature=0.0, max_tokens=10))
    top1 = engine.generate(PROMPTS, SamplingSpec(n=2, temperature=1.3, top_k=1, max_tokens=10))
    for g, t in zip(greedy, top1):
        assert all(s.token_ids == g[0].token_ids for s in t)
        seq = g[0].prompt_ids + g[0].token_ids
        z = _logits(reference, seq)[len(g[0].prompt_ids) - 1 : -1]
        assert z.argmax(-1).tolist() == g[0].token_ids


def test_stop_strings_max_tokens_and_eos(engine):
    prompt = [11, 42, 300, 512, 9]
    greedy = engine.generate([prompt], SamplingSpec(n=1, temperature=0.0, max_tokens=12))[0][0]
    assert len(greedy.token_ids) == 12 and greedy.finish_reason == "length"
    stop = next(t for t in (engine.tokenizer.decode([tok]) for tok in greedy.token_ids[4:]) if t.strip())
    cut = greedy.text.index(stop)
    stopped = engine.generate([prompt], SamplingSpec(n=1, temperature=0.0, max_tokens=12, stop=[stop]))[0][0]
    # ends right after the token completing the stop string; the text stops before it (vLLM's defaults)
    assert stopped.finish_reason == "stop" and stopped.text == greedy.text[:cut]
    k = len(stopped.token_ids)
    assert k < 12 and stopped.token_ids == greedy.token_ids[:k] and len(stopped.logprobs) == k
    assert stop in engine.tokenizer.decode(stopped.token_ids) and stop not in engine.tokenizer.decode(stopped.token_ids[:-1])
    # max tokens, and the model context (max_model_len=256) capping a long prompt's response
    for s in engine.generate([prompt], SamplingSpec(n=3, temperature=1.0, max_tokens=3))[0]:
        assert len(s.token_ids) <= 3 and (s.finish_reason == "stop" or len(s.token_ids) == 3)
    long = engine.generate([list(range(10, 250))], SamplingSpec(n=1, temperature=0.0, max_tokens=50))[0][0]
    assert len(long.token_ids) == 16 and long.finish_reason == "length"
    # EOS ends a sample and stays in its token ids (an engine whose only "EOS" is the greedy 3rd token)
    engine_eos, engine.eos_ids = engine.eos_ids, {greedy.token_ids[2]}
    try:
        ended = engine.generate([prompt], SamplingSpec(n=1, temperature=0.0, max_tokens=12))[0][0]
    finally:
        engine.eos_ids = engine_eos
    first = greedy.token_ids.index(greedy.token_ids[2]) + 1
    assert ended.finish_reason == "stop" and ended.token_ids == greedy.token_ids[:first]


def test_score_matches_a_direct_forward(engine, reference):
    seqs = [[5, 17, 99, 240, 7, 11], [3, 4], list(range(30, 70))]  # different lengths: padded batch
    for seq, got in zip(seqs, engine.score(seqs)):
        want = torch.log_softmax(_logits(reference, seq)[:-1], -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
        assert len(got) == len(seq) - 1
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want, atol=1e-5, rtol=0)


def test_update_weights_and_sleep_wake_on_cpu(tiny_dirs, reference):
    """Refit from HF-named tensors (bucket by bucket, a tied lm_head under either name) equals the
    HF model with those weights; sleep/wake on CPU keeps the weights; bad names/shapes are refused."""
    from megatron_mcpo.rollout.hf_engine import HFEngine

    eng = HFEngine(tiny_dirs[FAMILY], seed=0)
    gen = torch.Generator().manual_seed(7)
    new = {n: p.detach() + 0.05 * torch.randn(p.shape, generator=gen) for n, p in reference.named_parameters()}
    items = list(new.items())
    sent = eng.update_weights([items[: len(items) // 2], items[len(items) // 2 :]])
    assert sent == sum(t.nbytes for t in new.values())
    changed = type(reference).from_pretrained(tiny_dirs[FAMILY], dtype=torch.float32).eval()
    changed.load_state_dict(new, strict=False)
    seq = [5, 17, 99, 240, 7, 11, 42]
    want = torch.log_softmax(_logits(changed, seq)[:-1], -1).gather(-1, torch.tensor(seq[1:])[:, None])[:, 0]
    eng.sleep(1)  # CPU: nothing to free, the weights stay
    eng.wake_up()
    torch.testing.assert_close(torch.tensor(eng.score([seq])[0], dtype=torch.float64), want, atol=1e-5, rtol=0)
    with pytest.raises(KeyError, match="no parameter 'model.nope.weight'"):
        eng.update_weights([[("model.nope.weight", torch.zeros(2))]])
    with pytest.raises(ValueError, match="shape"):
        eng.update_weights([[("model.norm.weight", torch.zeros(3))]])
