"""Benchmark results: the ``Result`` value and its versioned JSON form, ``ResultStore`` (SQLite
file or SQLAlchemy URL, e.g. PostgreSQL for a team), export/import between databases, and the
noise-aware ``compare``.

One job per module: ``model`` (the value), ``location`` (path or URL, engine), ``schema`` (the
tables), ``migrate`` (Alembic, in place), ``store`` (read and write), ``transfer`` (export and
import), ``compare``. The JSON form is documented in docs/results-schema.md.
"""

from edgekit.results.compare import Comparison, MetricDelta, compare, latency_noise
from edgekit.results.location import is_url, mask
from edgekit.results.model import RESULT_SCHEMA, RESULT_VERSION, Result, _now, content_uid
from edgekit.results.store import DEFAULT_DB, ResultsDatabaseError, ResultStore, since_cutoff
from edgekit.results.transfer import (
    ImportSummary,
    export_results,
    import_results,
    read_result_file,
)

__all__ = [
    "DEFAULT_DB", "RESULT_SCHEMA", "RESULT_VERSION", "Comparison", "ImportSummary",
    "MetricDelta", "Result", "ResultStore", "ResultsDatabaseError", "_now", "compare",
    "content_uid", "export_results", "import_results", "is_url", "latency_noise", "mask",
    "read_result_file", "since_cutoff",
]
