"""What an import costs: the data path never loads the web server, Prometheus or the
development tools, and each CLI sub-command loads only its own.

Each check runs in a fresh interpreter, since this test process has loaded everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What only `serve`, `/metrics` and the development tools need.
WEB_AND_METRICS = {"starlette", "uvicorn", "prometheus_client"}


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``: top-level names,
    plus pitchey_cache's own modules by full name."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    # Our own interpreter, with code written here; no shell.
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    names: list[str] = json.loads(done.stdout.splitlines()[-1])
    return {n if n.startswith("pitchey_cache") else n.partition(".")[0] for n in names}


def own_modules(names: set[str], *, under: str) -> set[str]:
    return {n for n in names if n == under or n.startswith(under + ".")}


def test_importing_the_package_loads_neither_the_web_server_nor_prometheus() -> None:
    loaded = loaded_after("import pitchey_cache")

    assert loaded & WEB_AND_METRICS == set()
    # Nor the Redis driver: that comes with the first use of `Cache`.
    assert "glide" not in loaded


def test_a_cache_in_use_loads_neither_the_web_server_nor_prometheus_nor_devtools() -> None:
    loaded = loaded_after(
        "from pitchey_cache import Cache, Settings\ncache = Cache(Settings())\ncache.status()\n"
    )

    assert loaded & WEB_AND_METRICS == set()
    assert own_modules(loaded, under="pitchey_cache.web") == set()
    assert own_modules(loaded, under="pitchey_cache.devtools") == set()
    assert "pitchey_cache.metrics" not in loaded


def test_metrics_and_the_app_load_when_used() -> None:
    loaded = loaded_after(
        "from pitchey_cache import Cache, Settings, create_app\n"
        "cache = Cache(Settings())\n"
        "create_app(cache)\n"
        "cache.metrics.render()\n"
    )

    assert loaded >= {"starlette", "prometheus_client"}


@pytest.mark.parametrize("module", ["pitchey_cache.cli", "pitchey_cache.testing.plugin"])
def test_the_cli_and_the_pytest_plugin_load_nothing_heavy_until_used(module: str) -> None:
    loaded = loaded_after(f"import {module}")

    assert loaded & (WEB_AND_METRICS | {"glide", "httpx"}) == set()
    assert own_modules(loaded, under="pitchey_cache.devtools") == set()
    assert "pitchey_cache.status" not in loaded


def test_the_cli_loads_only_the_sub_command_it_runs() -> None:
    loaded = loaded_after(
        "import contextlib, io\n"
        "from pitchey_cache.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['status', '--help'])\n"
    )

    assert "pitchey_cache.status" in loaded
    assert loaded & WEB_AND_METRICS == set()
    assert "glide" not in loaded
    assert own_modules(loaded, under="pitchey_cache.devtools") == set()
