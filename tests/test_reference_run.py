"""A seeded short run reproduces bit for bit what tests/data/reference_run.json recorded.

The record was made before the training loop was restructured for reading (issue 13); any change
to the trainer that is not meant to change training must keep it. The comparison needs the same
torch release, CPU architecture, vector instructions and thread count as the record (the
floating-point kernels differ between them); elsewhere the test is skipped with the reason.
"""

import importlib.util
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_reference_run", DATA / "make_reference_run.py")
make_reference_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_reference_run)
RECORD = json.loads((DATA / "reference_run.json").read_text())
HERE = make_reference_run.platform_key()
RECORDED = {key: RECORD[key] for key in HERE}

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_figures"),
              pytest.mark.skipif(HERE != RECORDED, reason=f"the record is for {RECORDED}; this is {HERE}")]


@pytest.mark.parametrize("loader", ["device", "cpu"])
def test_a_seeded_short_run_reproduces_the_record_bit_for_bit(loader):
    assert make_reference_run.fingerprint(loader) == RECORD["runs"][loader]
