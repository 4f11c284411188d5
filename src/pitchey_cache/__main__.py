"""``python -m pitchey_cache`` runs the command line."""

import sys

from pitchey_cache.cli import main

sys.exit(main())
