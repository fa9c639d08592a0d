"""``python -m djobs``: the ``djobs`` command (`djobs.cli`), as the installed script runs it."""

from djobs.cli import main

raise SystemExit(main())
