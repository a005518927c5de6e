# GPU image: CUDA PyTorch + megatron-core + vLLM + Transformer Engine (the `gpu` extra), nemo-run for launching.
# Build: docker build -t megatron_mcpo .      Run: see README (torchrun / nemo-run / Slurm).
FROM nvcr.io/nvidia/pytorch:25.09-py3

WORKDIR /opt/megatron_mcpo
COPY setup.py pyproject.toml README.md ./
COPY constraints ./constraints
COPY megatron_mcpo ./megatron_mcpo
# The CPU constraints (torch==2.13.0 CPU build) must not be used here: CUDA vLLM pins its own torch.
RUN pip install --no-cache-dir -c constraints/gpu.txt -e ".[gpu,launch]"
COPY examples ./examples
COPY tools ./tools
COPY benchmarks ./benchmarks
COPY tests ./tests

ENV PYTHONUNBUFFERED=1 NCCL_CUMEM_ENABLE=0
ENTRYPOINT ["python", "-m", "megatron_mcpo"]
CMD ["--help"]
