"""Where the rollout engines run: a pure function of the job's layout (no torch, no process group).

Megatron orders ranks tp-cp-dp-pp (tensor parallel fastest): rank = tp + TP*(cp + CP*(dp + DP*pp)).
Each rank trains on GPU `rank % gpus_per_node` of node `rank // gpus_per_node` (one rank per GPU).

- colocated (GPU): every rank hosts an engine worker in-process on its own training GPU (vLLM's
  `external_launcher`; the HF engine in the rank itself). Engine e is the block of `rollout_tp`
  consecutive ranks [e*rollout_tp, (e+1)*rollout_tp): its rollout-TP group. Such a block must lie in one
  node and inside one data-parallel replica's tensor x context group, so every replica holds
  `tp*cp*pp / rollout_tp` engines; they split the replica's prompts between them.
- dedicated: one engine per data-parallel replica, driven by the replica's first rank (tp=cp=pp=0). On
  GPU it runs on `rollout_tp` GPUs of its own on the driver's node, taken from the node's
  `dedicated_gpus_per_node` GPUs after the training ranks' (`gpus_per_node - dedicated_gpus_per_node`
  ranks per node). On CPU: in the driver's process or its child (no device).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_mcpo.config import ConfigError


@dataclass(frozen=True)
class RankPlacement:
    rank: int
    node: int
    train_device: Optional[int]  # local GPU index of this rank's Megatron shard (None on CPU)
    dp_rank: int
    engine_id: Optional[int]  # the engine this rank hosts a worker of / drives; None: no engine here
    engine_leader: bool  # returns (and scores) the engine's rollouts; one per engine
    engine_devices: tuple[int, ...]  # local GPU indices of the engine's workers on `node` (empty on CPU)
    engine_ranks: tuple[int, ...]  # global ranks hosting the engine's rollout-TP workers (colocated), else (rank,)
    engine_index: int  # index of this rank's engine among its replica's engines (0 without one)
    engines_per_replica: int
    colocated: bool  # the engine's workers live in the training ranks' processes, on their GPUs


def resolve_placement(placement: str, on_gpu: bool) -> str:
    return ("colocated" if on_gpu else "dedicated") if placement == "auto" else placement


def plan_placement(world_size: int, tp: int, pp: int, cp: int, rollout_tp: int, placement: str, on_gpu: bool,
                   gpus_per_node: int = 8, dedicated_gpus_per_node: int = 0, engine: str = "vllm") -> list[RankPlacement]:
    """Every rank's placement (list index = global rank); ConfigError naming the field when impossible."""
    placement = resolve_placement(placement, on_gpu)
    mp = tp * cp * pp
    if world_size % mp:
        raise ConfigError(f"parallel: tp*pp*cp={mp} does not divide the world size {world_size}")
    if rollout_tp < 1:
        raise ConfigError(f"rollout.tp: must be >= 1, got {rollout_tp}")
    if engine == "hf" and rollout_tp > 1:
        raise ConfigError(f"rollout.tp: the HF engine runs on one device (rollout.tp must be 1, got {rollout_tp})")
    if rollout_tp > 1 and not on_gpu:
        raise ConfigError("rollout.tp: rollout tensor parallel > 1 is GPU only")
    dp = world_size // mp
    if placement == "colocated":
        return _colocated(world_size, tp, cp, dp, rollout_tp, on_gpu, gpus_per_node)
    return _dedicated(world_size, tp, cp, dp, rollout_tp, on_gpu, gpus_per_node, dedicated_gpus_per_node)


def _coords(rank: int, tp: int, cp: int, dp: int) -> tuple[int, int, int, int]:
    """(tp_rank, cp_rank, dp_rank, pp_rank) of a global rank in Megatron's tp-cp-dp-pp order."""
    return rank % tp, rank // tp % cp, rank // (tp * cp) % dp, rank // (tp * cp * dp)


def _colocated(world, tp, cp, dp, rtp, on_gpu, gpus_per_node) -> list[RankPlacement]:
    if not on_gpu:
        raise ConfigError("rollout.placement: colocated engines share the training GPUs (GPU only); "
                          "use dedicated (or auto) on CPU")
    if gpus_per_node < 1 or gpus_per_node % rtp:
        raise ConfigError(f"rollout.tp: {rtp} does not divide rollout.gpus_per_node={gpus_per_node} "
                          "(a rollout-TP group stays within one node)")
    if (tp * cp) % rtp:
        raise ConfigError(f"rollout.tp: colocated, {rtp} must divide parallel.tp*cp={tp * cp} "
                          "(an engine's workers lie inside one data-parallel replica)")
    per_replica = tp * cp * (world // (tp * cp * dp)) // rtp
    out = []
    for rank in range(world):
        t, c, d, p = _coords(rank, tp, cp, dp)
        first = rank - rank % rtp
        out.append(RankPlacement(
            rank=rank, node=rank // gpus_per_node, train_device=rank % gpus_per_node, dp_rank=d,
            engine_id=rank // rtp, engine_leader=rank == first,
            engine_devices=tuple((first + i) % gpus_per_node for i in range(rtp)),
            engine_ranks=tuple(range(first, first + rtp)),
            engine_index=p * (tp * cp // rtp) + (c * tp + t) // rtp, engines_per_replica=per_replica,
            colocated=True,
        ))
    return out


def _dedicated(world, tp, cp, dp, rtp, on_gpu, gpus_per_node, dedicated) -> list[RankPlacement]:
    ranks_per_node = gpus_per_node - dedicated if on_gpu else None
    if on_gpu:
        if dedicated < rtp:
            raise ConfigError(f"rollout.dedicated_gpus_per_node: the dedicated placement needs >= rollout.tp={rtp} "
                              f"GPUs per node for engines, got {dedicated}")
        if ranks_per_node < 1:
            raise ConfigError(f"rollout.dedicated_gpus_per_node: {dedicated} leaves no GPU for training out of "
                              f"rollout.gpus_per_node={gpus_per_node}")
    used: dict[int, int] = {}  # node -> engines placed on it so far
    out = []
    for rank in range(world):
        t, c, d, p = _coords(rank, tp, cp, dp)
        node = rank // ranks_per_node if on_gpu else 0
        drives = t == 0 and c == 0 and p == 0
        devices: tuple[int, ...] = ()
        if drives and on_gpu:
            j = used.get(node, 0)
            used[node] = j + 1
            if (j + 1) * rtp > dedicated:
                raise ConfigError(
                    f"rollout.dedicated_gpus_per_node: node {node} hosts {j + 1} data-parallel replicas' engines of "
                    f"rollout.tp={rtp} GPUs each, more than its {dedicated} dedicated GPUs")
            devices = tuple(ranks_per_node + j * rtp + i for i in range(rtp))
        out.append(RankPlacement(
            rank=rank, node=node, train_device=rank % ranks_per_node if on_gpu else None, dp_rank=d,
            engine_id=d if drives else None, engine_leader=drives, engine_devices=devices,
            engine_ranks=(rank,) if drives else (), engine_index=0, engines_per_replica=1,
            colocated=False,
        ))
    return out


def engine_share(records: list, placement: RankPlacement) -> list:
    """The records of a replica's batch that this rank's engine generates for: every K-th, K engines."""
    return records[placement.engine_index :: placement.engines_per_replica]


def merge_engine_shares(shares: dict[int, list], num_records: int, engines: int, n: int) -> list:
    """Back to record order: engine k's share holds n items per record of `engine_share` (record i is
    engine i % K's (i // K)-th); returns the n items of record 0, then of record 1, ..."""
    out = []
    for i in range(num_records):
        j = i // engines
        out += shares[i % engines][j * n : (j + 1) * n]
    return out
