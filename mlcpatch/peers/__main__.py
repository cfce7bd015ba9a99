import sys

from mlcpatch.peers.main import main

sys.exit(main())
