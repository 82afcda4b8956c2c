"""`python -m clipsim`: the command line (see clipsim.cli)."""
import sys

from clipsim.cli import main

sys.exit(main())
