"""Bad input never ends in a traceback: the config loader and the argument parser, fuzzed.

Whatever bytes a config file holds, loading it gives a Config or one ConfigError
line naming the file; whatever argv, parsing gives a namespace or argparse's
usage error (exit 2), never another exception.
"""

import contextlib
import io

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmfixtures.cli import build_parser
from vmfixtures.errors import ConfigError
from vmfixtures.spec import load_config

YAMLISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20)
SECTIONS = st.dictionaries(st.sampled_from(["vms", "mounts", "agents", "forwards", "defaults", "backups", "x"]),
                           YAMLISH, max_size=4)


def _load(tmp_path, data: bytes):
    path = tmp_path / "vmfixtures.yaml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message.strip() or message.startswith(str(path)), message
        assert str(path) in message, f"the error must name the file: {message}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_any_bytes_load_or_give_one_config_error(tmp_path, data):
    _load(tmp_path, data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(SECTIONS)
def test_any_yaml_structure_loads_or_gives_one_config_error(tmp_path, data):
    _load(tmp_path, yaml.safe_dump(data).encode())


def test_a_config_that_is_not_utf8_is_one_clear_line(tmp_path):
    path = tmp_path / "vmfixtures.yaml"
    path.write_bytes(b"vms:\n  web: {cpus: \xff}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


WORDS = st.sampled_from(["vm", "create", "start", "stop", "destroy", "list", "--all", "--json", "-c", "x.yaml",
                         "mount", "backup-once", "backup-clean", "tail", "thin", "3", "-1", "--timeout", "nan",
                         "--backend", "xen", "libvirt", "conformance", "daemon", "status", "--", "\x00", "é"])


@settings(max_examples=300, deadline=None)
@given(st.lists(WORDS | st.text(max_size=8), max_size=6))
def test_any_argv_parses_or_is_a_usage_error(argv):
    parser = build_parser()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2), f"argparse exit {exc.code} for {argv}"
