"""`python -m vbp_rt.cli`: the `vbp` command."""
import sys

from vbp_rt.cli import main

sys.exit(main())
