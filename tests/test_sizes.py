import pytest

from vmfixtures.errors import ConfigError
from vmfixtures.sizes import format_size, parse_size


@pytest.mark.parametrize("text, expected", [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5G", 3 * 2**29),
                                            ("64k", 65536), ("2GiB", 2 * 2**30), (4096, 4096), ("100", 100)])
def test_parse(text, expected):
    assert parse_size(text, "x") == expected


@pytest.mark.parametrize("bad", ["12 parsecs", "", "-1G", "0", True, "G"])
def test_parse_rejects_with_the_field_name(bad):
    with pytest.raises(ConfigError, match="^vms.a.memory: "):
        parse_size(bad, "vms.a.memory")


@pytest.mark.parametrize("n, text", [(512 * 2**20, "512M"), (2**30, "1G"), (1536 * 2**20, "1536M"), (1000, "1000")])
def test_format(n, text):
    assert format_size(n) == text
