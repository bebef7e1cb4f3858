"""Shared test setup: offline W&B, deterministic CPU threads; CUDA tests skipped without CUDA, PostgreSQL tests
skipped where no server runs (required where ``IRPE_BENCH_REQUIRE_POSTGRESQL`` is set, as ``.ci/run`` does)."""
import functools
import os
import socket

import pytest
import torch
from hypothesis import settings

# CI explores a fixed set of examples (a red CI must be reproducible); locally hypothesis searches afresh.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)  # two xdist workers on two cores


#: The server the PostgreSQL tests use (trust auth, database ``test``), as ``.ci/run`` starts it.
POSTGRESQL_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRESQL_ADDRESS = ("127.0.0.1", 5432)


@functools.lru_cache(maxsize=None)
def postgresql_missing() -> str | None:
    """Why the PostgreSQL tests cannot run here (no server accepting connections), None where they can."""
    try:
        socket.create_connection(POSTGRESQL_ADDRESS, timeout=2).close()
        return None
    except OSError as e:
        return (f"no PostgreSQL server on {POSTGRESQL_ADDRESS[0]}:{POSTGRESQL_ADDRESS[1]} ({e.strerror or e}); "
                "start one (pg_ctlcluster <version> main start) or see .ci/run")


def _postgresql_required() -> bool:
    return os.environ.get("IRPE_BENCH_REQUIRE_POSTGRESQL", "").lower() in ("1", "true", "yes")


@pytest.fixture
def postgresql_url() -> str:
    """The test server's URL; skips the test where no server runs (fails where one is required)."""
    why = postgresql_missing()
    if why is not None:
        (pytest.fail if _postgresql_required() else pytest.skip)(why)
    return POSTGRESQL_URL


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    needs_server = [item for item in items if item.get_closest_marker("postgresql")]
    if needs_server and not _postgresql_required() and postgresql_missing():
        skip = pytest.mark.skip(reason=postgresql_missing())
        for item in needs_server:
            item.add_marker(skip)
    _slow_first_in_each_workers_share(items)


def _slow_first_in_each_workers_share(items) -> None:
    """Order the tests for ``-n N --dist worksteal`` (pyproject.toml): that scheduler hands each of the N workers
    one contiguous share of this order, then moves the end of a busy worker's queue to an idle one. Each share
    here starts with its part of the slow tests (dealt round-robin) and ends with quick ones, kept in module
    order (their module fixtures set up once): what is left to move at the end is quick, and no worker ends the
    run alone inside a long test. Every worker computes the same order (xdist requires it)."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    slow = [item for item in items if item.get_closest_marker("slow")]
    quick = [item for item in items if not item.get_closest_marker("slow")]
    shares = [slow[k::workers] for k in range(workers)]
    cut = [len(quick) * k // workers for k in range(workers + 1)]
    items[:] = [item for k in range(workers) for item in shares[k] + quick[cut[k]:cut[k + 1]]]


@pytest.fixture(autouse=True)
def _no_storage_from_an_earlier_test(monkeypatch):
    """Each test starts without the storage URL a command moved into the environment (``--storage`` →
    ``IRPE_BENCH_STORAGE``, :func:`irpe_bench.sweep.arguments.take_storage`) and leaves none behind: a test that
    ran ``main([..., "--storage", url])`` in this process otherwise sent every later sweep to its storage."""
    monkeypatch.delenv("IRPE_BENCH_STORAGE", raising=False)
