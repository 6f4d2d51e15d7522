"""Install one pure-Python wheel in the guest, as pip would lay it out, with the standard library only.

Run in the guest as ``python3 -I -c SOURCE WHEEL``. pip itself takes about 4.5 s per install under
TCG (its imports are translated afresh every time); a wheel is a zip built to be unpacked (PEP 427),
so this does the same in a fraction of that. Installs into the scheme pip uses for the system python
(Debian: /usr/local/lib/python3.X/dist-packages, scripts in /usr/local/bin), replaces an earlier
install of the same project (its RECORD lists what to remove), writes console scripts from
entry_points.txt, and records INSTALLER and RECORD so pip sees the result as installed.
A wheel it does not lay out (platform-specific, header or data files) exits 3: pip installs it then.
"""

import base64
import configparser
import hashlib
import os
import re
import shutil
import sys
import sysconfig
import zipfile


def fail(message, code=2):
    sys.stderr.write(f"wheel_install: {message}\n")
    sys.exit(code)


def refuse(message):
    """A wheel this script does not lay out: exit 3, and the host installs it with pip instead."""
    fail(message, 3)


def scheme():
    """The install scheme pip uses for the system python outside a virtual environment."""
    name = "posix_local" if "posix_local" in sysconfig.get_scheme_names() else sysconfig.get_default_scheme()
    return sysconfig.get_path("purelib", name), sysconfig.get_path("scripts", name)


def record_line(path, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def remove_earlier(site, project):
    pattern = re.compile(re.sub(r"[-_.]+", "[-_.]+", re.escape(project)) + r"-[^-]+\.dist-info$", re.I)
    for entry in os.listdir(site) if os.path.isdir(site) else ():
        record = os.path.join(site, entry, "RECORD")
        if pattern.match(entry) and os.path.isfile(record):
            with open(record) as f:
                for line in f:
                    path = os.path.normpath(os.path.join(site, line.rsplit(",", 2)[0]))
                    if os.path.isfile(path):
                        os.unlink(path)
            shutil.rmtree(os.path.join(site, entry), ignore_errors=True)


def console_script(target):
    module, _, func = target.partition(":")
    head = func.split(".")[0]
    return (f"#!{sys.executable}\nimport sys\nfrom {module.strip()} import {head.strip()}\n"
            f"if __name__ == '__main__':\n    sys.exit({func.strip()}())\n")


def main(wheel):
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        fail(f"{wheel}: not a wheel ({exc})")
    names = archive.namelist()
    info = sorted({n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")})
    if len(info) != 1:
        fail(f"{wheel}: expected one .dist-info folder, found {info or 'none'}")
    info = info[0]
    wheel_meta = archive.read(f"{info}/WHEEL").decode()
    if "Root-Is-Purelib: true" not in wheel_meta:
        refuse(f"{wheel}: not a pure-Python wheel (Root-Is-Purelib is not true)")
    data_dir = info[: -len(".dist-info")] + ".data"
    for name in names:  # refuse before anything is written
        if name.startswith("/") or ".." in name.split("/"):
            fail(f"{wheel}: {name} points outside the install folder")
        kind = name[len(data_dir) + 1:].partition("/")[0] if name.startswith(data_dir + "/") else "purelib"
        if kind not in ("purelib", "platlib", "scripts"):
            refuse(f"{wheel}: {kind} files are pip's to install ({name})")
    site, scripts = scheme()
    remove_earlier(site, info.split("-")[0])
    record = []
    for name in names:
        if name.endswith("/") or name == f"{info}/RECORD":
            continue
        data = archive.read(name)
        if name.startswith(data_dir + "/"):
            kind, _, rest = name[len(data_dir) + 1:].partition("/")
            if kind in ("purelib", "platlib"):
                dest, rel = os.path.join(site, rest), rest
            else:  # scripts
                dest = os.path.join(scripts, rest)
                rel = os.path.relpath(dest, site)
                if data.startswith(b"#!python"):
                    data = b"#!" + sys.executable.encode() + data[len(b"#!python"):]
        else:
            dest, rel = os.path.join(site, name), name
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
        if name.startswith(data_dir + "/scripts/"):
            os.chmod(dest, 0o755)
        record.append(record_line(rel, data))
    if f"{info}/entry_points.txt" in names:
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.optionxform = str
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
        for command, target in (entry_points["console_scripts"].items()
                                if entry_points.has_section("console_scripts") else ()):
            dest = os.path.join(scripts, command)
            data = console_script(target).encode()
            with open(dest, "wb") as f:
                f.write(data)
            os.chmod(dest, 0o755)
            record.append(record_line(os.path.relpath(dest, site), data))
    installer = os.path.join(site, info, "INSTALLER")
    with open(installer, "w") as f:
        f.write("vmfixtures\n")
    record.append(record_line(f"{info}/INSTALLER", b"vmfixtures\n"))
    record.append(f"{info}/RECORD,,")
    with open(os.path.join(site, info, "RECORD"), "w") as f:
        f.write("\n".join(record) + "\n")
    print(info[: -len(".dist-info")])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: python3 -I -c SOURCE WHEEL")
    main(sys.argv[1])
