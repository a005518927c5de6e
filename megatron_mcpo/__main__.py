import sys

from megatron_mcpo.cli import main

if __name__ == "__main__":  # spawned workers (vLLM, checkpoint writers) re-import this module
    sys.exit(main())
