"""``python -m djobs.cli``: the ``djobs`` command."""

from djobs.cli import main

raise SystemExit(main())
