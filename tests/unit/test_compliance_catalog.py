"""The controls catalog: complete, well-formed, joined with its checks, and shown as it is in the README."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from embassy.compliance import Scope, Severity, controls
from embassy.compliance.checks import CHECKS, MEASURES

ROOT = Path(__file__).resolve().parents[2]
# What issue 3 asks the catalog to cover, and the control that covers it.
COVERAGE = {
    "encryption at rest with the embassy's own key": "EMB-ENC-01",
    "key rotation": "EMB-KMS-01",
    "key policy without host-nation principals": "EMB-KMS-02",
    "Object Lock COMPLIANCE with the configured retention": "EMB-S3-02",
    "versioning": "EMB-S3-04",
    "public access block": "EMB-S3-05",
    "TLS-only access": "EMB-S3-06",
    "no version deletion by agents": "EMB-IAM-01",
    "IMDSv2": "EMB-EC2-01",
    "encrypted volumes": "EMB-ENC-03",
    "no public IPs": "EMB-EC2-02",
    "no 0.0.0.0/0 or ::/0 inbound": "EMB-NET-01",
    "no internet gateway or NAT": "EMB-NET-03",
    "flow logs": "EMB-NET-04",
    "CloudTrail with log validation": "EMB-LOG-02",
    "placement in the host nation": "EMB-PLC-01",
    "required tags": "EMB-TAG-01",
    "replace or delete of a vault, key or log bucket": "EMB-CHG-01",
}


def test_catalog_is_complete_and_well_formed() -> None:
    catalog = controls()
    ids = [c.id for c in catalog]
    assert len(ids) >= 25 and len(set(ids)) == len(ids)
    assert set(COVERAGE.values()) <= set(ids)
    assert set(CHECKS) == set(ids), "every control has exactly one check"
    assert set(MEASURES) <= set(ids)
    for c in catalog:
        assert re.fullmatch(r"EMB-[A-Z0-9]{2,3}-\d{2}", c.id)
        assert c.title and len(c.rationale) > 30 and c.remediation and c.resource_types
        assert isinstance(c.severity, Severity) and isinstance(c.scope, Scope)
        assert set(c.frameworks) == {"cis", "nist", "iso"}
        assert c.frameworks["nist"], f"{c.id} maps to no NIST SP 800-53 control"
        assert all(re.fullmatch(r"[A-Z]{2}-\d+(\(\d+\))?", n) for n in c.frameworks["nist"])
        assert all(re.fullmatch(r"A\.[5-8]\.\d+", i) for i in c.frameworks["iso"])
        assert all(re.fullmatch(r"\d+(\.\d+)+", x) for x in c.frameworks["cis"])
        if c.measure:
            assert c.measure.better in ("higher", "true", "false", "fewer", "same")
    assert any(not c.mandatory for c in catalog) and any(c.mandatory for c in catalog)


def test_readme_table_is_the_generated_one() -> None:
    proc = subprocess.run([str(Path(sys.executable).parent / "embassy"), "controls", "--format", "md"],
                          capture_output=True, text=True, check=True)
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- controls table: begin -->\n", 1)[1].split("<!-- controls table: end -->", 1)[0]
    assert table == proc.stdout, "regenerate the README table with `embassy controls --format md`"
    assert proc.stdout.count("\n| EMB-") == len(controls())
