"""Rank -> engine / device / rollout-TP group for the 8xH200 example layouts, a 2-node job, CPU, and the
layouts validate() refuses (each naming the field)."""
import pytest

from megatron_mcpo.config import ConfigError, load_config
from megatron_mcpo.validation import validate
from megatron_mcpo.rollout.placement import plan_placement


def _by(plan, field):
    return [getattr(p, field) for p in plan]


def test_qwen3_4b_8xh200_colocated_one_engine_per_gpu():
    """TP1 x DP8, rollout TP1: every rank hosts its own engine on its own GPU and leads it."""
    plan = plan_placement(8, tp=1, pp=1, cp=1, rollout_tp=1, placement="auto", on_gpu=True)
    assert _by(plan, "engine_id") == list(range(8)) and all(_by(plan, "engine_leader")) and all(_by(plan, "colocated"))
    assert _by(plan, "engine_devices") == [(i,) for i in range(8)] and _by(plan, "train_device") == list(range(8))
    assert _by(plan, "engine_ranks") == [(i,) for i in range(8)] and _by(plan, "dp_rank") == list(range(8))
    assert set(_by(plan, "engines_per_replica")) == {1} and set(_by(plan, "node")) == {0}


def test_qwen3_8b_8xh200_colocated_rollout_tp2_engine_per_replica():
    """TP2 x DP4, rollout TP2: engine e = ranks (2e, 2e+1) on GPUs (2e, 2e+1) = data-parallel replica e."""
    plan = plan_placement(8, tp=2, pp=1, cp=1, rollout_tp=2, placement="colocated", on_gpu=True)
    assert _by(plan, "engine_id") == [0, 0, 1, 1, 2, 2, 3, 3] == _by(plan, "dp_rank")
    assert _by(plan, "engine_leader") == [True, False] * 4
    assert _by(plan, "engine_ranks") == [(0, 1), (0, 1), (2, 3), (2, 3), (4, 5), (4, 5), (6, 7), (6, 7)]
    assert _by(plan, "engine_devices") == _by(plan, "engine_ranks")  # one node: GPU index = rank
    assert set(_by(plan, "engines_per_replica")) == {1} and set(_by(plan, "engine_index")) == {0}


def test_colocated_two_engines_per_replica_with_pipeline_stages():
    """TP2 x PP2 x DP2 (rank = tp + 2*(dp + 2*pp)), rollout TP1: replica 0 = ranks {0, 1, 4, 5}, its four
    engines split its prompts in the order (pp, tp)."""
    plan = plan_placement(8, tp=2, pp=2, cp=1, rollout_tp=1, placement="colocated", on_gpu=True)
    assert _by(plan, "dp_rank") == [0, 0, 1, 1, 0, 0, 1, 1]
    assert _by(plan, "engine_index") == [0, 1, 0, 1, 2, 3, 2, 3] and set(_by(plan, "engines_per_replica")) == {4}


def test_two_nodes_colocated_rollout_tp2():
    """2 nodes x 8 GPUs, TP2 x DP8, rollout TP2: ranks 8-15 are node 1's GPUs 0-7; no group spans nodes."""
    plan = plan_placement(16, tp=2, pp=1, cp=1, rollout_tp=2, placement="colocated", on_gpu=True, gpus_per_node=8)
    assert _by(plan, "node") == [0] * 8 + [1] * 8
    assert plan[10].engine_devices == (2, 3) and plan[10].engine_ranks == (10, 11) and plan[10].engine_id == 5
    assert plan[11].train_device == 3 and not plan[11].engine_leader and plan[11].dp_rank == 5
    assert len({p.node for p in plan if p.engine_id == 4}) == 1


def test_two_nodes_dedicated_engines_on_their_own_gpus():
    """2 nodes x 8 GPUs, 4 training ranks + 4 engine GPUs per node: TP2 x DP4 (ranks 0-3 on node 0, 4-7 on
    node 1), rollout TP2: replica r's first rank drives its engine on GPUs (4, 5) or (6, 7) of its node."""
    plan = plan_placement(8, tp=2, pp=1, cp=1, rollout_tp=2, placement="dedicated", on_gpu=True,
                          gpus_per_node=8, dedicated_gpus_per_node=4)
    drivers = [p for p in plan if p.engine_id is not None]
    assert [p.rank for p in drivers] == [0, 2, 4, 6] and [p.engine_id for p in drivers] == [0, 1, 2, 3]
    assert [(p.node, p.engine_devices) for p in drivers] == [(0, (4, 5)), (0, (6, 7)), (1, (4, 5)), (1, (6, 7))]
    assert _by(plan, "train_device") == [0, 1, 2, 3] * 2 and not any(_by(plan, "colocated"))
    assert [p.engine_leader for p in plan] == [True, False] * 4


def test_cpu_dedicated_one_engine_per_replica_on_its_first_rank():
    plan = plan_placement(4, tp=2, pp=1, cp=1, rollout_tp=1, placement="auto", on_gpu=False, engine="hf")
    assert _by(plan, "engine_id") == [0, None, 1, None] and _by(plan, "engine_devices") == [()] * 4
    assert _by(plan, "train_device") == [None] * 4 and not any(_by(plan, "colocated"))


@pytest.mark.parametrize("kwargs, field", [
    (dict(engine="hf", rollout_tp=2, on_gpu=True), "rollout.tp"),  # the HF engine has one device
    (dict(placement="colocated", on_gpu=False), "rollout.placement"),  # colocated needs GPUs
    (dict(rollout_tp=4, on_gpu=True, tp=2), "rollout.tp"),  # an engine spanning two replicas
    (dict(rollout_tp=2, on_gpu=True, tp=2, gpus_per_node=3), "rollout.tp"),  # a TP group across nodes
    (dict(placement="dedicated", on_gpu=True), "rollout.dedicated_gpus_per_node"),  # no GPU for the engines
    # 12 ranks, 6 per node, TP2: 3 replicas per node need 3 engine GPUs, the node has 2
    (dict(placement="dedicated", on_gpu=True, world_size=12, dedicated_gpus_per_node=2), "rollout.dedicated_gpus_per_node"),
])
def test_impossible_placements_name_the_field(kwargs, field):
    args = dict(world_size=8, tp=2, pp=1, cp=1, rollout_tp=1, placement="auto", on_gpu=True, gpus_per_node=8)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        plan_placement(**args)


@pytest.mark.parametrize("overrides, world, gpu, field", [
    (["rollout.engine=hf", "rollout.tp=2", "run.device=cuda"], 1, True, "rollout.tp"),
    (["rollout.placement=colocated"], 1, False, "rollout.placement"),
    (["rollout.placement=dedicated", "rollout.dedicated_gpus_per_node=1", "parallel.tp=2", "rollout.tp=2",
      "run.device=cuda"], 2, True, "rollout.dedicated_gpus_per_node"),
    (["rollout.offload_grad_buffers=true"], 1, False, "rollout.offload_grad_buffers"),
    (["rollout.sleep_level=3"], 1, False, "rollout.sleep_level"),
    (["parallel.micro_batch_size=1"], 4, False, "algorithm.train_batch_prompts"),  # 10 prompts over 4 replicas
])
def test_validate_refuses_bad_placements(overrides, world, gpu, field):
    cfg = load_config("examples/configs/tiny_cpu.yaml", overrides)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(cfg, world_size=world, cuda_available=gpu)


@pytest.mark.parametrize("path", ["examples/configs/qwen3_4b_8xh200.yaml", "examples/configs/qwen3_8b_8xh200.yaml"])
def test_example_8xh200_configs_place_colocated(path, monkeypatch):
    """The examples' placement with the tiny model standing in for the checkpoint (validate reads config.json)."""
    cfg = load_config(path, ["model.hf_path=tiny:qwen3"])
    validate(cfg, world_size=8, cuda_available=True)
    r, p = cfg.rollout, cfg.parallel
    plan = plan_placement(8, p.tp, p.pp, p.cp, r.tp, r.placement, True, r.gpus_per_node, r.dedicated_gpus_per_node, r.engine)
    assert all(x.colocated for x in plan) and len({x.engine_id for x in plan}) == 8 // r.tp


def test_engine_shares_split_and_merge_back_in_record_order():
    """4 engines in a replica (TP4, rollout TP1), 7 records, n=2: engine k generates for records k, k+4;
    merging their outputs restores record order."""
    from megatron_mcpo.rollout.placement import engine_share, merge_engine_shares

    plan = plan_placement(4, tp=4, pp=1, cp=1, rollout_tp=1, placement="colocated", on_gpu=True)
    records = list("abcdefg")
    shares = {p.engine_index: [f"{r}{s}" for r in engine_share(records, p) for s in range(2)] for p in plan}
    assert engine_share(records, plan[1]) == ["b", "f"] and engine_share(records, plan[3]) == ["d"]
    merged = merge_engine_shares(shares, len(records), 4, 2)
    assert merged == [f"{r}{s}" for r in records for s in range(2)]
