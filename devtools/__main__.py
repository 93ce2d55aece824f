"""`python -m devtools`: the development command line (devtools/cli.py)."""
import sys

from devtools.cli import main

sys.exit(main())
