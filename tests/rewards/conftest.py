import pytest

from megatron_mcpo.rewards import RewardScorer, SandboxLimits

# Small limits keep the hostile-program tests fast; each still exercises the real mechanism.
LIMITS = SandboxLimits(cpu_time_s=1.0, wall_time_s=3.0, memory_mb=256, max_processes=16, file_size_mb=2,
                       output_mb=1, tmp_mb=8, tmp_inodes=256, open_files=64)


@pytest.fixture(scope="session")
def limits():
    return LIMITS


@pytest.fixture(scope="session")
def scorer():
    """One scorer (2 math workers, 2 sandbox slots) shared by the reward tests."""
    with RewardScorer(num_workers=2, sandbox_limits=LIMITS, math_timeout_s=2.0) as s:
        yield s
