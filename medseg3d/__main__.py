"""``python -m medseg3d`` (and ``torchrun ... -m medseg3d train CONFIG``) runs the command line."""

from .cli import main

main()
