"""A seeded short run reproduces bit for bit what tests/data/reference_run.json recorded.

The record was made before the training loop was restructured for reading (issue 13); any change
to the trainer that is not meant to change training must keep it. The comparison needs the same
torch release and CPU architecture as the record (floating-point kernels differ between them);
elsewhere the test is skipped with the reason.
"""

import importlib.util
import json
import platform
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_reference_run", DATA / "make_reference_run.py")
make_reference_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_reference_run)
RECORD = json.loads((DATA / "reference_run.json").read_text())
SAME_PLATFORM = (torch.__version__, platform.machine()) == (RECORD["torch"], RECORD["machine"])

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("close_figures"),
              pytest.mark.skipif(not SAME_PLATFORM, reason=f"the record is for torch {RECORD['torch']} on "
                                 f"{RECORD['machine']}; this is torch {torch.__version__} on {platform.machine()}")]


@pytest.mark.parametrize("loader", ["device", "cpu"])
def test_a_seeded_short_run_reproduces_the_record_bit_for_bit(loader):
    assert make_reference_run.fingerprint(loader) == RECORD["runs"][loader]
