"""``python -m qgraph``: the ``qgraph`` command line."""

import sys

from qgraph.cli import main

sys.exit(main())
