"""Entry point of the backend trainer process: ``python -m trainer.backend`` (under torchrun).

The server itself is ``trainer.service.backend``; this module only keeps the command short and
stable for clients, torchrun lines and the README.
"""

import sys

from .service.backend import main

if __name__ == "__main__":
    sys.exit(main())
