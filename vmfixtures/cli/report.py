"""`vmfixtures report` (the Allure report) and `vmfixtures docs` (the living specification)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import errors


def cmd_report(args) -> int:
    from ..report import render

    folders = args.results or [f for f in render.DEFAULT_RESULTS if f.is_dir()]
    if not folders:
        raise errors.ConfigError(f"no Allure results given and none in {render.DEFAULT_RESULTS[0]} "
                                 "(run ./bootstrap test, or the spec with -f allure_behave.formatter:AllureFormatter)")
    counts = [render.check_results(f) for f in folders]
    index = render.render(folders, args.out)
    print(f"wrote {index} from {sum(counts)} result(s) in {', '.join(map(str, folders))}; "
          f"open it in a browser (xdg-open {index})")
    return 0


def cmd_docs(args) -> int:
    from ..report import living

    out = living.write(Path(args.features), args.records, Path(args.out))
    print(f"wrote the living specification to {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="render the Allure results into one self-contained HTML report",
                       description="Render Allure results into one self-contained index.html with Allure 3 "
                                   "(node); the report folder keeps the history of earlier renders.")
    p.add_argument("--results", type=Path, action="append", metavar="DIR",
                   help="an Allure results folder; repeat for several (default: reports/allure-results and "
                        "reports/allure-results-libvirt, those that exist)")
    p.add_argument("--out", type=Path, default=Path("reports/allure-report"), metavar="DIR",
                   help="the report folder (default: reports/allure-report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("docs", help="write the living specification (capabilities, scenarios, status, seed rules)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Write the living specification: every capability with its scenarios, their "
                                   "status per backend and product in the latest runs, and the seed rule each "
                                   "implements.")
    p.add_argument("--features", default="features", help="the feature files' folder (default: features)")
    p.add_argument("--records", type=Path, nargs="*", metavar="FILE",
                   help="conformance records (default: reports/conformance/*.json)")
    p.add_argument("--out", default="reports/living-spec.md", help="where to write it (default: reports/living-spec.md)")
    p.set_defaults(func=cmd_docs)
