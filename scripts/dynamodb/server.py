"""Local DynamoDB-compatible endpoint for scripts/services.sh.

Runs moto's server (Apache-2.0, from PyPI) bound to the given host and port. Only the DynamoDB
API is used by the project; moto routes a request by the service named in its SigV4
Authorization header, which every AWS SDK sends (an unsigned request is taken for S3).

The access log of werkzeug (one line per request) is silenced: under load it would be most of
the log file and most of the CPU time.
"""

import logging
import sys

logging.getLogger("werkzeug").setLevel(logging.WARNING)

from moto import __version__ as moto_version  # noqa: E402
from moto.server import main  # noqa: E402

if __name__ == "__main__":
    print(f"moto {moto_version} DynamoDB endpoint, args {sys.argv[1:]}", flush=True)
    main(sys.argv[1:])
