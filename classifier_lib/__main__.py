import sys

from classifier_lib.cli import main

sys.exit(main())
