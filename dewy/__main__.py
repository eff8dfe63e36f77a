from dewy.cli import main

raise SystemExit(main())
