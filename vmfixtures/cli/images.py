"""`vmfixtures image`: build, list and remove cached guest images."""

from __future__ import annotations

import json

from .. import images
from .common import add_json


def cmd_image_build(args) -> int:
    img = images.build(images.default_recipe(), mirror=args.mirror, force=args.force, quiet=args.quiet)
    print(img.dir)
    return 0


def cmd_image_list(args) -> int:
    rows = [img.meta | {"dir": str(img.dir)} for img in images.list_images()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']}-{r['key']}  kernel {r['kernel']}  built {r['built_at']}  {r['dir']}")
        if not rows:
            print("no cached images (build one with `vmfixtures image build`)")
    return 0


def cmd_image_rm(args) -> int:
    for d in images.remove(*args.ident):
        print(f"removed {d}")
    return 0


def register(sub) -> None:
    img = sub.add_parser("image", help="build, list and remove cached guest images").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    b = img.add_parser("build", help="build the Debian 12 guest image (needs root; cached by recipe hash)")
    b.add_argument("--mirror", help="Debian mirror URL (default: $VMFIXTURES_MIRROR, else the host's apt sources)")
    b.add_argument("--force", action="store_true", help="rebuild even when cached")
    b.set_defaults(func=cmd_image_build)
    l = img.add_parser("list", help="list cached images")
    add_json(l)
    l.set_defaults(func=cmd_image_list)
    r = img.add_parser("rm", help="remove cached images by folder name, recipe name or key")
    r.add_argument("ident", nargs="+", help="folder name, recipe name or key (one that matches nothing: "
                   "nothing is removed)")
    r.set_defaults(func=cmd_image_rm)
