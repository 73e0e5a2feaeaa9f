"""``python -m adex`` runs the command line interface."""
import sys

from adex.cli import main

if __name__ == "__main__":
    sys.exit(main())
