"""``python -m jalki_core.cli``: the ``jalki`` command."""

import sys

from jalki_core.cli.app import main

sys.exit(main())
