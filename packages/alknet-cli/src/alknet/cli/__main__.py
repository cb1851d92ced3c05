"""``python -m alknet.cli`` runs the ``alknet`` command."""

import sys

from alknet.cli.main import main

sys.exit(main())
