"""Sequence packing layout (models/packing.py): lengths from masks, pack/unpack round trips, sequence
boundaries, the block-diagonal causal mask and the THD parameters. Exact (integer/bool) comparisons."""
import pytest
import torch

from megatron_mcpo.models.packing import (
    block_causal_mask,
    pack,
    packed_length,
    sequence_lengths,
    thd_packed_seq_params,
)


def _padded(lengths, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 1000, (len(lengths), s), generator=g)
    return tokens


def test_sequence_lengths_end_at_the_last_response_token():
    m = torch.zeros(5, 10, dtype=torch.bool)
    m[0, 3:10] = True  # full row
    m[1, 4:5] = True  # a length-1 response
    m[2, 1:6] = True  # right padding after it
    m[4, 0] = True  # the response is the first token
    # row 3 has no response token: it keeps one token
    assert sequence_lengths(m).tolist() == [10, 5, 6, 1, 1]
    with pytest.raises(ValueError, match=r"\[b, s\]"):
        sequence_lengths(m[0])


def test_round_trip_with_very_different_lengths():
    lengths = torch.tensor([1, 37, 2, 64, 13])
    tokens = _padded(lengths, 64)
    layout = pack(tokens, lengths, multiple=8)
    total = int(lengths.sum())  # 117 -> T = 120, one tail segment of 3
    assert layout.length == 120 == packed_length(lengths, 8)
    assert layout.cu_seqlens.dtype == torch.int32
    assert layout.cu_seqlens.tolist() == [0, 1, 38, 40, 104, 117, 120]
    assert layout.max_seqlen == 64
    # the packed row is the concatenation of the real tokens, then zeros
    expected = torch.cat([tokens[i, : int(n)] for i, n in enumerate(lengths)])
    assert torch.equal(layout.tokens[0, :total], expected)
    assert layout.tokens[0, total:].eq(0).all()
    # unpack inverts pack on every real token and zeroes the padding
    back = layout.unpack(layout.tokens)
    valid = torch.arange(64).unsqueeze(0) < lengths.unsqueeze(1)
    assert torch.equal(back[valid], tokens[valid])
    assert back[~valid].eq(0).all()
    # positions restart in every segment (tail included)
    pos = layout.position_ids[0]
    assert pos[:1].tolist() == [0] and pos[1:38].tolist() == list(range(37)) and pos[117:].tolist() == [0, 1, 2]


def test_no_tail_segment_when_the_sum_is_aligned_and_min_length_pads():
    lengths = torch.tensor([3, 5])
    tokens = _padded(lengths, 5)
    exact = pack(tokens, lengths, multiple=8)
    assert exact.length == 8 and exact.cu_seqlens.tolist() == [0, 3, 8]
    padded = pack(tokens, lengths, multiple=8, min_length=24)  # a pipeline's common length
    assert padded.length == 24 and padded.cu_seqlens.tolist() == [0, 3, 8, 24] and padded.max_seqlen == 16
    assert torch.equal(padded.unpack(padded.tokens), exact.unpack(exact.tokens))


def test_unpack_drop_first_never_leaks_across_sequence_boundaries():
    lengths = torch.tensor([4, 1, 6])
    layout = pack(_padded(lengths, 6), lengths)
    # a next-token quantity of the packed row: value j was predicted from position j-1
    values = torch.arange(layout.length, dtype=torch.float32).view(1, -1, 1).expand(1, -1, 2)
    out = layout.unpack(values, drop_first=True)
    assert out.shape == (3, 6, 2)
    starts = [0, 4, 5]
    for i, n in enumerate(lengths.tolist()):
        assert out[i, 0].eq(0).all()  # the first token of each sequence: 0, like t = 0 unpacked
        for t in range(1, 6):
            want = starts[i] + t if t < n else 0.0
            assert out[i, t, 0].item() == want


def test_unpack_gradient_reaches_only_kept_positions():
    lengths = torch.tensor([3, 2])
    layout = pack(_padded(lengths, 4), lengths, multiple=8)
    x = torch.randn(1, layout.length, requires_grad=True)
    layout.unpack(x, drop_first=True).sum().backward()
    # kept: positions 1, 2 (row 0) and 4 (row 1); sequence starts 0 and 3 and the tail get nothing
    assert x.grad[0].tolist() == [0, 1, 1, 0, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="expected packed values"):
        layout.unpack(torch.zeros(2, layout.length))


def test_block_causal_mask_matches_brute_force():
    lengths = torch.tensor([2, 1, 3])
    layout = pack(_padded(lengths, 3), lengths, multiple=4)  # T = 8, tail segment of 2
    mask = block_causal_mask(layout)
    assert mask.shape == (1, 1, 8, 8) and mask.dtype == torch.bool
    segment = [0, 0, 1, 2, 2, 2, 3, 3]
    for q in range(8):
        for k in range(8):
            assert bool(mask[0, 0, q, k]) == (not (segment[q] == segment[k] and k <= q)), (q, k)


def test_thd_params_describe_the_segments():
    lengths = torch.tensor([5, 2])
    layout = pack(_padded(lengths, 5), lengths, multiple=8)
    p = thd_packed_seq_params(layout)
    assert p.qkv_format == "thd" and p.max_seqlen_q == p.max_seqlen_kv == 5
    for cu in (p.cu_seqlens_q, p.cu_seqlens_kv, p.cu_seqlens_q_padded, p.cu_seqlens_kv_padded):
        assert cu.dtype == torch.int32 and cu.tolist() == [0, 5, 7, 8]


@pytest.mark.parametrize(
    "lengths,kwargs,match",
    [([0, 3], {}, "in \\[1, 4\\]"), ([5, 3], {}, "in \\[1, 4\\]"), ([2], {}, "1 lengths for 2 rows"),
     ([2, 2], {"multiple": 0}, "multiple must be >= 1")],
)
def test_bad_input_names_the_problem(lengths, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pack(torch.zeros(2, 4, dtype=torch.long), torch.tensor(lengths), **kwargs)


def test_config_rejects_packing_with_context_parallel():
    from megatron_mcpo.config import ConfigError, load_config
    from megatron_mcpo.validation import validate

    cfg = load_config(overrides=["model.sequence_packing=true", "parallel.cp=2"])
    # refused by the general context-parallel check (packing would also need its own CP sharding)
    with pytest.raises(ConfigError, match="parallel.cp: context parallel > 1 is not supported yet"):
        validate(cfg, cuda_available=True, te_available=True)
    validate(load_config(overrides=["model.sequence_packing=true"]), cuda_available=False)
