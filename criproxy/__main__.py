import sys

from criproxy.cli import main

sys.exit(main())
