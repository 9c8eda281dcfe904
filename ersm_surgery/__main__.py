"""``python -m ersm_surgery``: the ``ersm-surgery`` command (also under ``torchrun -m ersm_surgery``)."""
from .cli.main import main

if __name__ == "__main__":
    main()
