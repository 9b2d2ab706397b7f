"""`zpatch`, as the console script runs it, for a fork server that has zimage_patcher imported already
(testing/drift_job.py): what zimage_patcher reads from the environment when it is imported is read
again first, from this run's environment (as testing/run.py does for its runs)."""
import os
import sys

from zimage_patcher import durable, git
from zimage_patcher.entry import main

durable.configure()
git._TRACE = bool(os.environ.get("ZPATCH_TRACE"))
sys.argv[0] = "zpatch"
sys.exit(main())
