"""`python -m mt_assets.deploy`: see mt_assets/deploy/serve.py."""

import sys

from mt_assets.deploy.serve import main

sys.exit(main())
