"""Session-wide defaults for `make test`: offline, smoke profile, no progress bars.

They apply to the unit tests, the chapter tests and the notebooks papermill runs (their kernels
inherit this environment). CI sets the same variables explicitly in `.ci/run`.
"""

import os
import tempfile
from pathlib import Path

_DATA = Path(__file__).resolve().parent.parent / "shared" / "data"
if _DATA.is_dir():
    os.environ.setdefault("TLUTILS_DATA_DIR", str(_DATA))
for key, value in {"TLUTILS_PROFILE": "smoke", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "TLUTILS_PROGRESS": "0", "TQDM_DISABLE": "1"}.items():
    os.environ.setdefault(key, value)
# Chapters executed by the tests write their results here, not over `make book`'s outputs/.
os.environ.setdefault("TLUTILS_OUTPUT_DIR", tempfile.mkdtemp(prefix="tlutils-test-outputs-"))
