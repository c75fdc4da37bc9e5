"""``python -m rlgen`` = the ``rlgen`` command; ``torchrun --nproc-per-node N -m rlgen train ...``
starts it once per process."""

import sys

from rlgen.cli import main

if __name__ == "__main__":
    sys.exit(main())
