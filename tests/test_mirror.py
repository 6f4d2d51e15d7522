import pytest

from vmfixtures.errors import ConfigError
from vmfixtures.images.mirror import host_mirror, resolve_mirror

DEB822 = """Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.fixture
def apt(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_deb822_picks_the_suite(apt):
    (apt / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert host_mirror("bookworm", apt) == "http://mirror.example/debian"


def test_other_release_reuses_the_main_archive_not_security(apt):
    (apt / "sources.list.d" / "debian.sources").write_text(DEB822.replace("bookworm bookworm-updates", "trixie"))
    assert host_mirror("bookworm", apt) == "http://mirror.example/debian"


def test_one_line_format_with_options(apt):
    (apt / "sources.list").write_text("# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n")
    assert host_mirror("bookworm", apt) == "http://m.example/debian"


def test_disabled_stanza_is_ignored(apt):
    (apt / "sources.list.d" / "x.sources").write_text("Enabled: no\n" + DEB822)
    assert host_mirror("bookworm", apt) is None


def test_explicit_and_environment_win(monkeypatch):
    monkeypatch.setenv("VMFIXTURES_MIRROR", "http://env.example/debian/")
    assert resolve_mirror("bookworm") == "http://env.example/debian"
    assert resolve_mirror("bookworm", "http://opt.example/debian") == "http://opt.example/debian"


def test_no_mirror_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("VMFIXTURES_MIRROR", raising=False)
    monkeypatch.setattr("vmfixtures.images.mirror.APT_DIR", tmp_path)
    with pytest.raises(ConfigError, match="--mirror"):
        resolve_mirror("bookworm")
