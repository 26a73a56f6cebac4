"""``python -m agents ...`` (and ``accelerate launch -m agents train ...``) is the ``refuel`` command."""

import sys

from .harness.cli import main

sys.exit(main())
