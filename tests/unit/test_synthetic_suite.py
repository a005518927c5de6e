"""The embedded procedural suite: disjoint splits by construction, thousands of distinct items per
domain, every reference answer verified by the real reward functions, prompts that fit the demo."""
import pytest

from megatron_mcpo.data.dataset import score_item
from megatron_mcpo.data.synthetic import FAMILIES, split_of, synthetic_suite

DOMAINS = ("math", "code", "science", "tooluse", "safety")


def _texts(records, domain):
    return {r["prompt"][-1]["content"] for r in records if r["data_source"] == domain}


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """The tiny Qwen3 checkpoint's tokenizer, the one the demo trains with."""
    from transformers import AutoTokenizer

    from megatron_mcpo.models.tiny import tiny_checkpoint_dir

    return AutoTokenizer.from_pretrained(tiny_checkpoint_dir("qwen3"))


def test_no_heldout_prompt_occurs_in_the_train_split():
    train = synthetic_suite(1500, seed=0) + synthetic_suite(1500, seed=7)
    heldout = synthetic_suite(400, seed=0, split="heldout") + synthetic_suite(400, seed=3, split="heldout")
    for d in DOMAINS:
        tr, ho = _texts(train, d), _texts(heldout, d)
        assert len(ho) >= 100 and not tr & ho, d
    assert all(r["extra_info"]["split"] == "heldout" for r in heldout)


def test_split_is_a_fixed_partition_of_each_family_parameter_space():
    # the same parameters always land in the same split; about one in five is held out
    params = [(a, b) for a in range(10, 60) for b in range(10, 60)]
    first = [split_of("math/add", p) for p in params]
    assert first == [split_of("math/add", p) for p in params]
    assert 0.15 < first.count("heldout") / len(first) < 0.25


def test_each_domain_has_thousands_of_distinct_train_items_and_several_families():
    records = synthetic_suite(4000, seed=1)
    for d in DOMAINS:
        assert len(_texts(records, d)) >= 1000, d
        assert len({r["extra_info"]["family"] for r in records if r["data_source"] == d}) == len(FAMILIES[d]) >= 4


def test_deterministic_in_seed_and_records_in_verl_format():
    a, b, c = synthetic_suite(20, seed=5), synthetic_suite(20, seed=5), synthetic_suite(20, seed=6)
    assert a == b and a != c
    assert [r["data_source"] for r in a[:5]] == list(DOMAINS)
    for r in a:
        assert r["prompt"][-1]["role"] == "user" and "ground_truth" in r["reward_model"]
        assert r["extra_info"]["domain"] == r["data_source"] and r["extra_info"]["reference"]
    with pytest.raises(ValueError, match="unknown split 'test'"):
        synthetic_suite(1, split="test")


@pytest.fixture(scope="module")
def scorer():
    from megatron_mcpo.rewards import RewardScorer

    with RewardScorer(num_workers=1) as s:
        yield s


def test_reference_answers_pass_the_real_verifiers_and_other_answers_fail(scorer):
    # every family of both splits: the reference scores 1, the next item's reference (another answer) scores 0
    records = [r for split in ("train", "heldout") for r in synthetic_suite(16, seed=11, split=split)]
    by_family = {}
    for r in records:
        by_family.setdefault((r["data_source"], r["extra_info"]["family"]), []).append(r)
    pairs = [(rs[0], rs[0]["extra_info"]["reference"]) for rs in by_family.values()]
    wrong = []
    for rs in by_family.values():
        other = next((o for o in rs[1:] if o["reward_model"]["ground_truth"] != rs[0]["reward_model"]["ground_truth"]), None)
        if other is not None:
            wrong.append((rs[0], other["extra_info"]["reference"]))
    assert len(pairs) == sum(len(f) for f in FAMILIES.values()) and len(wrong) >= len(pairs) - 2
    right = scorer.score_batch([score_item(r, text) for r, text in pairs])
    assert [res["acc"] for res in right] == [True] * len(pairs), [k for k, res in zip(by_family, right) if not res["acc"]]
    bad = scorer.score_batch([score_item(r, text) for r, text in wrong])
    assert not any(res["acc"] for res in bad)


def test_abstentions_replace_the_asked_share_of_references_and_score_zero(scorer):
    import random

    from megatron_mcpo.demo import ABSTENTION, with_abstentions

    records = synthetic_suite(60, seed=5)  # 300 records, all five domains
    taught = with_abstentions(records, 0.4, random.Random(0))
    assert taught == with_abstentions(records, 0.4, random.Random(0))  # a function of the rng's seed
    changed = [i for i, (a, b) in enumerate(zip(records, taught)) if a != b]
    for i in changed:  # only the reference differs
        a, b = records[i], taught[i]
        assert b["extra_info"]["reference"] == ABSTENTION
        assert {**b, "extra_info": {**b["extra_info"], "reference": a["extra_info"]["reference"]}} == a
    assert 96 <= len(changed) <= 144, len(changed)  # binomial(300, 0.4): 120 +- 8.5 (sd)
    assert {records[i]["data_source"] for i in changed} == {"math", "code", "science", "tooluse", "safety"}
    verdicts = scorer.score_batch([score_item(r, r["extra_info"]["reference"]) for r in taught])
    assert [i for i, v in enumerate(verdicts) if not v["acc"]] == changed  # every verifier scores it 0
    assert with_abstentions(records, 0.0, random.Random(0)) == records
    with pytest.raises(ValueError, match="abstention rate must be in"):
        with_abstentions(records, 1.0, random.Random(0))


def test_length_buckets_keep_the_records_and_cut_the_padding():
    import random

    from megatron_mcpo.demo import length_bucketed

    records = synthetic_suite(64, seed=3, system_prompts=False)  # the demo's: 320 records, 16 batches of 20
    size = lambda r: len(str(r["prompt"])) + len(r["extra_info"]["reference"])  # noqa: E731
    padded = lambda rs: sum(max(map(size, rs[i : i + 20])) * len(rs[i : i + 20]) for i in range(0, len(rs), 20))  # noqa: E731
    bucketed = length_bucketed(records, 20, 8, random.Random(0))
    assert sorted(map(repr, bucketed)) == sorted(map(repr, records))  # a permutation
    # within each window of 8 batches: the same records as before, in batches of similar length
    for w in range(0, 320, 160):
        assert sorted(map(repr, bucketed[w : w + 160])) == sorted(map(repr, records[w : w + 160]))
    assert padded(bucketed) < 0.75 * padded(records), (padded(bucketed), padded(records))
    assert length_bucketed(records, 20, 1, random.Random(0)) == records


def test_every_prompt_fits_the_demo_prompt_length(tiny_tokenizer):
    # the longest domain (safety, ~270 tokens of which are its system prompt) exhaustively, the rest sampled
    import itertools

    from megatron_mcpo.config import load_config
    from megatron_mcpo.data.prompts import chat
    from megatron_mcpo.data.synthetic import OPENERS, SAFETY_TEMPLATES

    limit = load_config("examples/configs/tiny_cpu.yaml").rollout.max_prompt_length
    tok = tiny_tokenizer

    def length(messages):
        return len(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])

    records = synthetic_suite(100, seed=2) + synthetic_suite(100, seed=2, split="heldout")
    assert max(length(r["prompt"]) for r in records) <= limit
    for name, (_, _, _, first, second) in SAFETY_TEMPLATES.items():
        build = FAMILIES["safety"][name][1]
        worst = max(length(chat("safety", build(p)["q"])) for p in itertools.product(first, second, OPENERS, (0, 1)))
        assert worst <= limit, name


def test_tiny_tokenizer_reads_numbers_one_digit_per_token(tiny_tokenizer):
    # as Qwen2/3's tokenizers do: the digits of a number are the same tokens in the question and in the
    # \boxed{} answer (no " 5" vs "5", no merged "42"), so the tiny model can copy them token by token
    tok = tiny_tokenizer

    def digit_tokens(text):
        pieces = [tok.decode([i]) for i in tok(text)["input_ids"]]
        assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p)), pieces
        return [p for p in pieces if p.isdigit()]

    question, answer = "What is 5700 + 38?", "<think> 5700 + 38 = 5738 </think> \\boxed{5738}"
    assert digit_tokens(question) == list("570038") and digit_tokens(answer) == list("57003857385738")
    assert tok(" 5")["input_ids"][-1] == tok("{5")["input_ids"][-1] == tok("5")["input_ids"][0]
    assert tok.decode(tok(answer)["input_ids"]) == answer


def test_demo_table_compares_the_first_and_last_held_out_evaluation():
    from megatron_mcpo.demo import held_out_change, held_out_table

    history = [
        {"step": 0, "eval/all/acc": 0.4, "eval/math/acc": 0.5, "eval/code/acc": 0.3, "eval/all/count": 20,
         "eval/math/count": 10, "eval/code/count": 10},
        {"step": 1, "pg_loss": 0.1},
        {"step": 2, "eval/all/acc": 0.55, "eval/math/acc": 0.7, "eval/code/acc": 0.4, "eval/all/count": 20,
         "eval/math/count": 10, "eval/code/count": 10},
    ]
    assert held_out_change(history) == {"code": (0.3, 0.4), "math": (0.5, 0.7), "all": (0.4, 0.55)}
    table = held_out_table(history).splitlines()
    assert table[0].startswith("| held-out acc (step 0 → 2; greedy)") and table[2] == "| code | 0.300 | 0.400 | +0.100 | 10 |"
    assert table[-1] == "| all | 0.400 | 0.550 | +0.150 | 20 |"
    # sampled evaluation: the header says how, the last column counts prompts (count / samples)
    table = held_out_table(history, samples=2, temperature=0.8).splitlines()
    assert "2 samples/prompt at T=0.8" in table[0] and table[-1] == "| all | 0.400 | 0.550 | +0.150 | 10 |"
    assert held_out_table(history[1:2]) == ""


def test_system_prompts_can_be_left_out_and_nothing_else_changes():
    with_system, bare = synthetic_suite(10, seed=4), synthetic_suite(10, seed=4, system_prompts=False)
    assert {r["prompt"][0]["role"] for r in with_system if r["data_source"] != "tooluse"} == {"system"}
    assert all([m["role"] for m in r["prompt"]] == ["user"] for r in bare)
    assert [r["prompt"][-1] for r in with_system] == [r["prompt"][-1] for r in bare]
    assert [{**r, "prompt": None} for r in with_system] == [{**r, "prompt": None} for r in bare]
