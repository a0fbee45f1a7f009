"""benchmarks/study.py: the study runner's old entry point, kept for scripts and notes that
name it (benchmarks/gpu_session.sh). The runner is ``spatialssl compare``
(``spatialssl.study``); this passes its flags on.

    python benchmarks/study.py --budget cpu_tuned --time-limit 9000   # = spatialssl compare ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from spatialssl.study import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
