"""`python -m exporter.demo`: see exporter.demo.main."""

import sys

from exporter.demo.main import main

sys.exit(main())
