"""``python -m longcot ...`` is the ``longcot`` command (for environments without the console script)."""

from longcot.cli import main

raise SystemExit(main())
