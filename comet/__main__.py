"""``python -m comet`` runs the server, as ``python -m comet.server`` does."""

import sys

from comet.server import main

sys.exit(main())
