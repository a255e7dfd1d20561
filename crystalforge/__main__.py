"""``python -m crystalforge``: the command line."""

from __future__ import annotations

import sys

from crystalforge.agent.cli import main

sys.exit(main())
