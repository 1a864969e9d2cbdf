from bridgeport.cli import main

raise SystemExit(main())
