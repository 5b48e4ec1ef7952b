"""``python -m napari_sscce.cli`` (and ``torchrun -m napari_sscce.cli``): the ``sscce`` command."""

import sys

from napari_sscce.cli import main

sys.exit(main())
