"""The Allure report and the living specification.

- ``results``: what a behave run adds to its Allure results: environment, categories and
  executor files, labels from tags, hook and cleanup errors as *broken*, evidence attachments.
- ``render``: one self-contained ``index.html`` from one or more result folders with Allure 3
  (the npm package, run by node), keeping the run history beside the report.
- ``living``: the living specification, from ``features/`` and the latest conformance records.
"""
