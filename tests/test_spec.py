import pytest

from vmfixtures.errors import ConfigError
from vmfixtures.spec import VMSpec, load_config


def write(tmp_path, text):
    p = tmp_path / "vmfixtures.yaml"
    p.write_text(text)
    return p


def error_of(tmp_path, text):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    return str(exc.value)


def test_valid_config_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "vms:\n  web:\n    cpus: 2\n    memory: 1G\n  db: {}\n"))
    assert cfg.vms["web"] == VMSpec("web", cpus=2, memory=1024**3)
    assert cfg.vms["db"] == VMSpec("db")
    assert cfg.folder == tmp_path


@pytest.mark.parametrize("body, line, field, words", [
    ("vms:\n  web:\n    cpus: 2\n    memory: 12 parsecs\n", 4, "vms.web.memory", "is not a size"),
    ("vms:\n  web:\n    cpus: many\n", 3, "vms.web.cpus", "whole number"),
    ("vms:\n  web:\n    cpus: 0\n", 3, "vms.web.cpus", "between 1 and 64"),
    ("vms:\n  web:\n    disk: 1G\n", 3, "vms.web.disk", "smaller than the image"),
    ("vms:\n  web:\n    memory: 64M\n", 3, "vms.web.memory", "below the minimum"),
    ("vms:\n  web:\n    colour: blue\n", 3, "vms.web.colour", "unknown field"),
    ("vms:\n  web:\n    image: windows-95\n", 3, "vms.web.image", "unknown image"),
    ("vms:\n  Web_1: {}\n", 2, "vms.Web_1", "not a valid VM name"),
    ("vms: []\n", 1, "vms", "expected a mapping"),
    ("networks: {}\n", 1, "networks", "unknown section"),
])
def test_bad_field_names_file_line_and_field(tmp_path, body, line, field, words):
    message = error_of(tmp_path, body)
    assert message.startswith(f"{tmp_path / 'vmfixtures.yaml'}:{line}: {field}")
    assert words in message


def test_invalid_yaml_names_the_line(tmp_path):
    message = error_of(tmp_path, "vms:\n  web:\n    cpus: [1\n")
    assert "not valid YAML" in message and "vmfixtures.yaml:" in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_unknown_vm_lists_the_defined_ones(tmp_path):
    cfg = load_config(write(tmp_path, "vms:\n  web: {}\n"))
    with pytest.raises(ConfigError, match=r"no VM named 'db' .*defined: web"):
        cfg.vm("db")


def test_differences_are_field_by_field():
    a, b = VMSpec("web"), VMSpec("web", cpus=2, memory=1024**3)
    assert a.differences(b) == ["cpus: existing 1, requested 2", "memory: existing 512M, requested 1G"]
    assert a.differences(VMSpec("web")) == []


FWD = "vms:\n  web: {}\nforwards:\n"


def test_forwards_default_to_loopback(tmp_path):
    from vmfixtures.spec import Endpoint, ForwardSpec

    cfg = load_config(write(tmp_path, FWD + "  - {vm: web, kind: local, host: 8080, guest: 80}\n"
                                            "  - {vm: web, kind: socks5, host: '0.0.0.0:1080'}\n"))
    assert cfg.forwards == [ForwardSpec("web", "local", Endpoint("127.0.0.1", 8080), Endpoint("127.0.0.1", 80)),
                            ForwardSpec("web", "socks5", Endpoint("0.0.0.0", 1080))]


@pytest.mark.parametrize("entry, field, words", [
    ("{vm: db, kind: local, host: 8080, guest: 80}", "forwards[0].vm", "no VM named 'db'"),
    ("{vm: web, kind: tcp, host: 8080, guest: 80}", "forwards[0].kind", "not one of local, remote, socks5"),
    ("{vm: web, kind: local, host: 70000, guest: 80}", "forwards[0].host", "not a port"),
    ("{vm: web, kind: local, host: 8080}", "forwards[0].guest", "required for a local forward"),
    ("{vm: web, kind: socks5, host: 1080, guest: 80}", "forwards[0].guest", "no guest end"),
    ("{vm: web, kind: local, guest: 80}", "forwards[0].host", "required"),
    ("{vm: web, kind: local, host: 8080, guest: 80, via: x}", "forwards[0].via", "unknown field"),
])
def test_bad_forward_names_line_and_field(tmp_path, entry, field, words):
    message = error_of(tmp_path, FWD + f"  - {entry}\n")
    assert message.startswith(f"{tmp_path / 'vmfixtures.yaml'}:4: {field}"), message
    assert words in message


def test_two_forwards_on_one_host_port_are_refused(tmp_path):
    message = error_of(tmp_path, FWD + "  - {vm: web, kind: local, host: 8080, guest: 80}\n"
                                       "  - {vm: web, kind: socks5, host: 8080}\n")
    assert "forwards[1].host: port 8080 already listens for forwards[0]" in message
