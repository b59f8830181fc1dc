"""``python -m spatialspec``: same as the ``spatialspec`` console script."""

from spatialspec.cli import main

raise SystemExit(main())
