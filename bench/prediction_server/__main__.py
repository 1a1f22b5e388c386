"""`python -m bench.prediction_server`: see bench/prediction_server/__init__.py."""

import sys

from bench.prediction_server.run import main

sys.exit(main())
