"""Local DynamoDB-compatible endpoint for scripts/services.sh.

Runs moto's server (Apache-2.0, from PyPI) bound to the given host and port. Only the DynamoDB
API is used by the project; moto routes a request by the service named in its SigV4
Authorization header, which every AWS SDK sends (an unsigned request is taken for S3).

The access log of werkzeug (one line per request) is silenced: under load it would be most of
the log file and most of the CPU time.

moto's Query on a table's own key reads every item of the table, sorted, and then keeps those of
the queried partition key: O(table) per call, where DynamoDB is O(partition). A recount queries
each of an election's 256 write-shard buckets, so on a table of a million votes that is the
difference between seconds and hours. `_query_one_partition` hands moto's own query a view of
the table whose `all_items` holds only the queried partition; everything else is moto's code.
"""

import inspect
import logging
import sys

logging.getLogger("werkzeug").setLevel(logging.WARNING)

from moto import __version__ as moto_version  # noqa: E402
from moto.dynamodb.models.table import Table  # noqa: E402
from moto.server import main  # noqa: E402

_moto_query = Table.query
_query_signature = inspect.signature(_moto_query)


class _OnePartition:
    """The table as moto's query sees it, narrowed to one partition key's items."""

    def __init__(self, table, hash_key):
        self._table = table
        self._hash_key = hash_key

    def __getattr__(self, name):
        return getattr(self._table, name)

    def all_items(self):
        # .get, not [], so a query of an absent key does not create an empty partition.
        partition = self._table.items.get(self._hash_key)
        if partition is None:
            return []
        if self._table.range_key_attr:
            return sorted(partition.values(), key=lambda item: item.range_key)
        return [partition]


def _query_one_partition(self, *args, **kwargs):
    bound = _query_signature.bind(self, *args, **kwargs)
    hash_key = bound.arguments.get("hash_key")
    if bound.arguments.get("index_name") is None and hash_key is not None:
        return _moto_query(_OnePartition(self, hash_key), *args, **kwargs)
    return _moto_query(self, *args, **kwargs)


Table.query = _query_one_partition

if __name__ == "__main__":
    print(f"moto {moto_version} DynamoDB endpoint, args {sys.argv[1:]}", flush=True)
    main(sys.argv[1:])
