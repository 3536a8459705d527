"""``python -m research`` is the ``animerec`` command."""
import sys

from research.cli import main

sys.exit(main())
