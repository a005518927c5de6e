"""Strict YAML loading, --set overrides and validation before any process group exists."""
import pytest
import torch.distributed as dist

from megatron_mcpo.config import Config, ConfigError, load_config
from megatron_mcpo.validation import validate


def _yaml(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_validate():
    validate(Config(), world_size=1, cuda_available=False)


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "mcpo_grpo", "mcpo_dapo"])
def test_demo_config_validates_for_every_algorithm(algorithm):
    # benchmarks/learning.py runs the demo under each (DAPO's overlong buffer must fit its 48 tokens)
    cfg = load_config("examples/configs/tiny_cpu.yaml", [f"algorithm.name={algorithm}"])
    validate(cfg, world_size=1, cuda_available=False)


def test_unknown_key_names_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"mcpo\.temprature.*did you mean 'temperature'"):
        load_config(_yaml(tmp_path, "mcpo:\n  temprature: 0.2\n"))
    with pytest.raises(ConfigError, match=r"unknown config key 'paralel'.*'parallel'"):
        load_config(_yaml(tmp_path, "paralel:\n  tp: 2\n"))


def test_types_and_literals_checked(tmp_path):
    with pytest.raises(ConfigError, match=r"parallel\.tp: expected an integer"):
        load_config(_yaml(tmp_path, "parallel:\n  tp: two\n"))
    with pytest.raises(ConfigError, match=r"mcpo\.denominator: 'pos-neg' is not one of.*did you mean 'pos_neg'"):
        load_config(overrides=["mcpo.denominator=pos-neg"])
    with pytest.raises(ConfigError, match=r"rollout\.engine_log_level: 'info' is not one of.*did you mean 'INFO'"):
        load_config(overrides=["rollout.engine_log_level=info"])


def test_overrides_apply_over_yaml(tmp_path):
    cfg = load_config(_yaml(tmp_path, "mcpo:\n  cl_coef: 0.3\nrollout:\n  n: 4\n"), ["mcpo.cl_coef=1e-2", "rollout.stop=[a, b]"])
    assert cfg.mcpo.cl_coef == pytest.approx(0.01)
    assert cfg.rollout.n == 4 and cfg.rollout.stop == ["a", "b"]
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["mcpo.cl_coef"])


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["parallel.tp=3"], "parallel.tp"),  # 4 heads
        (["parallel.tp=4"], "parallel.tp"),  # 2 KV heads
        (["parallel.pp=3"], "parallel.pp"),  # 4 layers
        (["model.recompute_granularity=full", "model.recompute_num_layers=3"], "model.recompute_num_layers"),
        (["model.recompute_granularity=full", "parallel.pp=2", "model.recompute_num_layers=4"],
         "model.recompute_num_layers"),
        (["model.hf_path=tiny:gpt2"], "model.hf_path"),
        (["model.fp8=hybrid"], "model.fp8"),
        (["parallel.sequence_parallel=true", "parallel.tp=2"], "parallel.sequence_parallel"),
        (["mcpo.temperature=0"], "mcpo.temperature"),
        (["algorithm.mini_batch_prompts=3"], "algorithm.mini_batch_prompts"),
        (["data.domains=[math, sciense]"], "data.domains"),
        (["algorithm.kl_coef=-0.01"], "algorithm.kl_coef"),
        (["algorithm.name=dapo", "rollout.max_response_length=64"], "algorithm.overlong_buffer_len"),
        (["parallel.cp=2"], "parallel.cp"),  # not supported yet (nothing shards the loss over the sequence)
        (["algorithm.name=dapo", "algorithm.max_num_gen_batches=0"], "algorithm.max_num_gen_batches"),
        (["algorithm.name=dapo", "algorithm.gen_batch_prompts=6"], "algorithm.gen_batch_prompts"),  # dp = 4
        (["algorithm.gen_batch_prompts=16"], "algorithm.gen_batch_prompts"),  # grpo: no dynamic sampling
        (["algorithm.rollout_correction.tis_cap=0.5"], "algorithm.rollout_correction.tis_cap"),
        (["algorithm.rollout_correction.token_mask_low=0.5"], "algorithm.rollout_correction.token_mask_low"),
        (["rollout.temperature=0"], "rollout.temperature"),
        (["optimizer.lr_warmup_steps=10", "optimizer.lr_decay_steps=10"], "optimizer.lr_decay_steps"),
        (["optimizer.optimizer=sgd", "parallel.use_distributed_optimizer=true"],
         "parallel.use_distributed_optimizer: megatron's distributed optimizer takes optimizer.optimizer=adam"),
    ],
)
def test_validation_names_the_field_before_any_process_group(overrides, field):
    cfg = load_config(overrides=overrides)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(cfg, world_size=4, cuda_available=False)
    assert not dist.is_initialized()


def test_cp_refused_even_on_gpu():
    with pytest.raises(ConfigError, match=r"parallel\.cp: context parallel > 1 is not supported yet"):
        validate(load_config(overrides=["parallel.cp=2", "run.device=cuda"]), world_size=2, cuda_available=True)


def test_new_algorithm_fields_accept_valid_values():
    cfg = load_config(overrides=["algorithm.name=dapo", "algorithm.gen_batch_prompts=16", "rollout.temperature=0.7",
                                 "algorithm.rollout_correction.seq_mask_c=2", "algorithm.loss_agg_mode=seq-mean-token-sum",
                                 "algorithm.rollout_correction.token_mask_low=0.5",
                                 "algorithm.rollout_correction.token_mask_high=5"])
    validate(cfg, world_size=4, cuda_available=False)
    assert cfg.algorithm.rollout_correction.seq_mask_c == 2.0
    assert cfg.algorithm.optimizer_steps_per_rl_step == 2  # 8 prompts per step, 4 per mini-batch, 1 epoch


def test_unsupported_hf_architecture(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "num_attention_heads": 4, "num_hidden_layers": 2}')
    with pytest.raises(ConfigError, match="unsupported model_type 'gpt2'"):
        validate(load_config(overrides=[f"model.hf_path={tmp_path}"]), cuda_available=False)


def test_world_size_must_fit_layout():
    cfg = load_config(overrides=["parallel.tp=2"])
    with pytest.raises(ConfigError, match="does not divide the world size 3"):
        validate(cfg, world_size=3, cuda_available=False)
