"""``python -m baps_fed.cli``: the same command as ``baps-fed``."""

from baps_fed.cli import main

raise SystemExit(main())
