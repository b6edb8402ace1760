"""The openspf RFC 7208 test suite, as scenarios to serve and cases to run.

The suite ships with pyspf (Debian's python3-spf) as a gzipped file of YAML
documents, one scenario each: a description, ``zonedata`` and ``tests``.

    for scenario in load_suite():
        with DnsServer(scenario.served_zonedata()) as server:
            for case in scenario.cases:
                ...  # case.host, case.helo, case.mailfrom -> case.results
"""

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

SUITE_PATH = Path("/usr/share/doc/python3-spf/rfc7208-tests.yml.gz")
# The number of test cases in the 2014.04 release of the suite.
SUITE_CASE_COUNT = 203
# The suite's placeholder for "this name has no record of this type".
NO_RECORD = "NONE"


@dataclass(frozen=True)
class SpfCase:
    """One test case: an SPF check and the results it may give."""

    name: str
    scenario: str                 # the scenario's description
    host: str                     # the SMTP client's IP address
    helo: str
    mailfrom: str                 # "" for a null reverse-path
    results: tuple                # acceptable results, preferred first
    spec: str                     # the RFC 7208 section, e.g. "4.3/1"
    explanation: Optional[str] = None   # "DEFAULT": the default explanation
    description: Optional[str] = None
    comment: Optional[str] = None
    strict: object = True         # pyspf's strictness (2: "harsh")

    def accepts(self, result, explanation=None):
        """Whether an SPF check that gave these values passes the case."""
        if result not in self.results:
            return False
        return self.explanation is None or self.explanation == explanation


@dataclass(frozen=True)
class SpfScenario:
    """One YAML document: zone data and the cases run against it."""

    description: str
    zonedata: dict                # exactly as in the suite
    cases: tuple = field(default=())
    comment: Optional[str] = None

    def served_zonedata(self):
        """The zone data a DNS server must serve for this scenario.

        Applies the suite's driver conventions (its header, and pyspf's
        testspf.py): a name with type SPF records and no TXT entry gets the
        same records as TXT, and an entry whose value is "NONE" stands for
        no record (it only stops that duplication).
        """
        served = {}
        for name, entries in self.zonedata.items():
            records = []
            has_txt = any(isinstance(entry, dict) and "TXT" in entry
                          for entry in entries)
            doubled = []
            for entry in entries:
                if not isinstance(entry, dict):
                    records.append(entry)       # "TIMEOUT"
                    continue
                for rtype, value in entry.items():
                    if value in (NO_RECORD, [NO_RECORD]):
                        continue
                    records.append({rtype: value})
                    if rtype == "SPF" and not has_txt:
                        doubled.append({"TXT": value})
            served[name] = records + doubled
        return served


def _case(name, data, scenario):
    results = data["result"]
    if isinstance(results, str):
        results = [results]
    return SpfCase(
        name=name,
        scenario=scenario,
        host=str(data["host"]),
        helo=str(data["helo"]),
        mailfrom=str(data["mailfrom"] or ""),
        results=tuple(results),
        # YAML reads a section such as 4.6 as a float.
        spec=str(data.get("spec", "")),
        explanation=data.get("explanation"),
        description=data.get("description"),
        comment=data.get("comment"),
        strict=data.get("strict", True),
    )


def load_suite(path=SUITE_PATH):
    """All scenarios of the suite, in file order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as stream:
        documents = [doc for doc in yaml.safe_load_all(stream) if doc]
    scenarios = []
    for document in documents:
        description = document.get("description", "")
        cases = tuple(_case(name, data, description)
                      for name, data in (document.get("tests") or {}).items())
        scenarios.append(SpfScenario(
            description=description,
            zonedata=document.get("zonedata") or {},
            cases=cases,
            comment=document.get("comment"),
        ))
    return scenarios


def all_cases(scenarios):
    """(scenario, case) for every case of every scenario."""
    return [(scenario, case) for scenario in scenarios
            for case in scenario.cases]
