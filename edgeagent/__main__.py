from edgeagent.cli.main import main

raise SystemExit(main())
